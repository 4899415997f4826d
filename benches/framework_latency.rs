//! The framework's own share of a turn's latency, in microseconds: the
//! conversation graph with the model stages replaced by scripted stand-ins
//! that answer at once.
//!
//! The graph is channel source → WebRTC VAD → end-of-speech marker →
//! scripted STT → scripted LLM → sentence aggregator → scripted TTS →
//! playback → counting sink, fed a LibriVox recording (16 kHz) as fast as
//! possible. The stand-ins emit a transcript when the turn's speech stops,
//! six text tokens for a transcript, and 20 ms of audio per sentence, with
//! no computation. So the time from the VAD ending the turn to the first
//! reply audio leaving playback is everything the framework adds to model
//! inference: edges, task wake-ups, the aggregator and playback. Criterion
//! reports it per turn.
//!
//! Run with `cargo bench --no-default-features --bench framework_latency`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mentis::pipeline::basic::{ChannelSource, CountingSink};
use mentis::pipeline::{
    AudioData, AudioFormat, Control, EdgeConfig, Emitter, Frame, FrameMeta, GraphBuilder, MediaTime, Payload,
    PortFormat, PrivacyPolicy, PrivacyTier, Processor, SessionId, StageError, StageName, StageSpec, TextDelta,
    Transcript, TranscriptKind, TurnId, processor,
};
use mentis::stages::playback::{EndOfSpeechMarker, Pacing, Playback, PlaybackLog, TurnEnds};
use mentis::stages::text::SentenceAggregator;
use mentis::stages::vad::{Vad, VadConfig, WebRtcConfig, WebRtcVad};
use mentis::stages::wav::open_wav;

const CLIP: &str = "/usr/share/pocketsphinx/test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav";
const SPEECH: AudioFormat = AudioFormat::mono_f32(16_000);

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

/// Emits a final transcript when a turn's speech stops.
struct ScriptedStt;

impl Processor for ScriptedStt {
    fn spec(&self) -> StageSpec {
        StageSpec::new(name("stt"), PortFormat::Audio(SPEECH), PortFormat::Transcript)
    }

    fn process(&mut self, _frame: Frame, _out: &mut Emitter<'_>) -> Result<(), StageError> {
        Ok(())
    }

    fn control(&mut self, control: &Control, meta: &FrameMeta, out: &mut Emitter<'_>) -> Result<(), StageError> {
        if *control == Control::SpeechStopped {
            let transcript = Transcript {
                kind: TranscriptKind::Final,
                text: "he was not an ill disposed young man".to_owned(),
                start: MediaTime::ZERO,
                end: meta.timestamp,
                confidence: None,
            };
            let next = out.next_meta(meta.turn, meta.timestamp);
            out.emit(Frame::new(next, Payload::Transcript(transcript)));
        }
        Ok(())
    }
}

/// Replies to a final transcript with six tokens forming one sentence.
struct ScriptedLlm;

impl Processor for ScriptedLlm {
    fn spec(&self) -> StageSpec {
        StageSpec::new(name("llm"), PortFormat::Transcript, PortFormat::Text)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let turn = frame.meta.turn;
        for (index, token) in ["I", " am", " glad", " to", " hear", " that."].iter().enumerate() {
            if index == 0 {
                out.mark(turn, mentis::pipeline::TurnMark::FirstToken);
            }
            let meta = out.next_meta(turn, frame.meta.timestamp);
            out.emit(Frame::new(meta, Payload::Text(TextDelta { text: (*token).to_owned(), last: false })));
        }
        let meta = out.next_meta(turn, frame.meta.timestamp);
        out.emit(Frame::new(meta, Payload::Text(TextDelta { text: String::new(), last: true })));
        Ok(())
    }
}

/// Speaks each sentence as 20 ms of silence.
struct ScriptedTts;

impl Processor for ScriptedTts {
    fn spec(&self) -> StageSpec {
        StageSpec::new(name("tts"), PortFormat::Text, PortFormat::Audio(SPEECH))
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let Payload::Text(delta) = &frame.payload else {
            return Ok(());
        };
        if delta.text.trim().is_empty() {
            return Ok(());
        }
        out.mark(frame.meta.turn, mentis::pipeline::TurnMark::FirstTtsAudio);
        let audio = AudioData::from_f32(16_000, 1, vec![0.0_f32; 320]).map_err(|error| StageError::fatal(error.to_string()))?;
        let meta = out.next_meta(frame.meta.turn, MediaTime::ZERO);
        out.emit(Frame::audio(meta, audio));
        Ok(())
    }
}

fn read_clip() -> Vec<f32> {
    let mut reader = open_wav(CLIP).expect("LibriVox clip; run scripts/setup");
    let mut samples = Vec::new();
    while reader.read_f32(16_000, &mut samples).expect("readable clip") > 0 {}
    samples
}

/// Runs one turn through the graph and returns end of speech → first audio out.
async fn one_turn(samples: &[f32]) -> Duration {
    let turn_ends = TurnEnds::default();
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let (input, source) = ChannelSource::new(name("capture"), PortFormat::Audio(SPEECH), EdgeConfig::lossless(16));
    let detector = WebRtcVad::new(WebRtcConfig::new(16_000)).expect("valid WebRTC settings");
    let mut vad_config = VadConfig::for_detector(&detector);
    vad_config.sample_format = mentis::pipeline::SampleFormat::F32;
    let vad = Vad::with_config(name("vad"), detector, vad_config).expect("valid VAD settings");
    let marker = EndOfSpeechMarker::new(name("end-of-speech"), PortFormat::Audio(SPEECH)).with_turn_ends(turn_ends.clone());
    let playback = Playback::new(name("playback"), SPEECH, Pacing::AsFastAsPossible, PlaybackLog::default()).with_turn_ends(turn_ends);
    let (sink, _count) = CountingSink::new(name("sink"));
    graph.chain(
        vec![
            Box::new(source),
            processor(vad),
            processor(marker),
            processor(ScriptedStt),
            processor(ScriptedLlm),
            processor(SentenceAggregator::new(name("sentences"))),
            processor(ScriptedTts),
            Box::new(playback),
            Box::new(sink),
        ],
        EdgeConfig::lossless(64),
    );
    let session = graph.build().expect("valid graph").start(SessionId(1));

    for (seq, block) in samples.chunks(320).enumerate() {
        let audio = AudioData::from_f32(16_000, 1, block.to_vec()).expect("valid audio");
        let meta = FrameMeta {
            session: SessionId(1),
            turn: TurnId::NONE,
            seq: seq as u64,
            timestamp: MediaTime::from_samples(seq as u64 * 320, 16_000),
        };
        input.send(Frame::audio(meta, audio)).await.expect("pipeline running");
    }
    drop(input);
    let report = session.wait().await.expect("clean end");
    let turn = report.turns.iter().find(|turn| turn.voice_to_voice_ms.is_some()).expect("one turn with reply audio");
    Duration::from_secs_f64(turn.voice_to_voice_ms.unwrap_or_default() / 1e3)
}

fn framework_latency(c: &mut Criterion) {
    let samples = read_clip();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("framework_latency");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.bench_function("end_of_speech_to_first_audio_out", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    total += one_turn(&samples).await;
                }
                total
            })
        });
    });
    group.finish();
}

criterion_group!(benches, framework_latency);
criterion_main!(benches);
