//! Speech synthesis with the real engines: flite's slt voice (feature
//! `flite`) and the Piper voice en_US-joe-medium (feature `piper`).
//!
//! The tests fail, rather than skip, when a library, ONNX Runtime or the
//! voice is missing; `scripts/setup` installs them. They print each
//! engine's real-time factor (synthesis time over audio time); run with
//! `--nocapture` to see it:
//!
//! ```text
//! cargo test -p mentis-stages --features piper --test tts -- --nocapture
//! ```

#![cfg(any(feature = "flite", feature = "piper"))]

use std::time::{Duration, Instant};

use mentis_pipeline::basic::{ChannelSink, ChannelSource};
use mentis_pipeline::{
    Control, DropReason, EdgeConfig, Emitter, Frame, FrameMeta, GraphBuilder, MediaTime, Payload, PortFormat,
    PrivacyPolicy, PrivacyTier, Processor, SessionId, StageName, TextDelta, TurnId, TurnMark, processor,
};
use mentis_stages::tts::{SpeechEngine, Tts};

const SESSION: SessionId = SessionId(11);

/// Two sentences, about 2 s of speech.
const TEXT: &str = "Hello there. How are you today?";

/// A reply long enough that an interrupt after its first frame is mid-sentence.
const LONG_TEXT: &str = "This is a rather long first sentence that keeps going for quite a while before it ends. \
                         And then a second sentence follows it.";

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

fn text_frame(turn: u64, text: &str, last: bool) -> Frame {
    let meta = FrameMeta { session: SESSION, turn: TurnId(turn), seq: 0, timestamp: MediaTime::ZERO };
    Frame::new(meta, Payload::Text(TextDelta { text: text.to_owned(), last }))
}

fn control_frame(turn: u64, control: Control) -> Frame {
    Frame::control(FrameMeta { session: SESSION, turn: TurnId(turn), seq: 0, timestamp: MediaTime::ZERO }, control)
}

/// What one reply produced.
struct Speech {
    samples: Vec<f32>,
    sample_rate: u32,
    frames: usize,
    elapsed: Duration,
}

impl Speech {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / f64::from(self.sample_rate))
    }

    fn rms(&self) -> f64 {
        let sum: f64 = self.samples.iter().map(|&sample| f64::from(sample) * f64::from(sample)).sum();
        (sum / self.samples.len().max(1) as f64).sqrt()
    }

    fn real_time_factor(&self) -> f64 {
        self.elapsed.as_secs_f64() / self.duration().as_secs_f64()
    }
}

/// Speaks `text` as turn `turn` through the stage outside a graph and
/// collects the audio, checking that every frame has the stage's declared
/// format.
fn speak<E: SpeechEngine>(tts: &mut Tts<E>, turn: u64, text: &str) -> Speech {
    let format = tts.format();
    let mut out = Emitter::new(SESSION);
    let started = Instant::now();
    tts.process(text_frame(turn, text, true), &mut out).expect("synthesis succeeds");
    let elapsed = started.elapsed();

    let mut samples = Vec::new();
    let mut frames = 0;
    for frame in out.frames() {
        let audio = frame.as_audio().expect("the stage emits only audio");
        assert_eq!(audio.format(), format, "frame {} has the declared format", frame.meta.seq);
        assert!(audio.duration() <= Duration::from_millis(20), "frame {} lasts {:?}", frame.meta.seq, audio.duration());
        samples.extend(audio.to_f32());
        frames += 1;
    }
    assert!(out.turns().get(TurnId(turn), TurnMark::FirstTtsAudio).is_some(), "first audio is marked");
    Speech { samples, sample_rate: format.sample_rate, frames, elapsed }
}

fn check_plausible(engine: &str, speech: &Speech) {
    let duration = speech.duration();
    let rms = speech.rms();
    println!(
        "{engine}: {:.2} s of audio at {} Hz in {} frames, RMS {rms:.3}, synthesized in {:.3} s: real-time factor {:.3}",
        duration.as_secs_f64(),
        speech.sample_rate,
        speech.frames,
        speech.elapsed.as_secs_f64(),
        speech.real_time_factor(),
    );
    assert!(duration >= Duration::from_millis(800), "{engine} audio too short: {duration:?}");
    assert!(duration <= Duration::from_secs(5), "{engine} audio too long: {duration:?}");
    assert!(rms > 0.02, "{engine} audio is nearly silent: RMS {rms}");
    assert!(speech.samples.iter().all(|sample| (-1.0..=1.0).contains(sample)), "{engine} samples stay in [-1, 1]");
}

/// What happened to a reply interrupted after its first audio frame.
#[derive(Debug)]
struct Interrupted {
    /// Audio frames the stage emitted for the interrupted turn after the
    /// interrupt was queued on its input edge.
    emitted_after: u64,
    /// Audio frames of the interrupted turn that the listener received after
    /// sending the interrupt: those already queued on the way, plus
    /// `emitted_after`.
    received_after: usize,
    /// Audio frames of the following turn.
    next_turn: usize,
    /// Queued frames of the interrupted turn that the edges discarded.
    discarded: u64,
}

/// Returns the frames that the stage named `stage` has sent so far, counted
/// when each send starts.
fn frames_out(session: &mentis_pipeline::Session, stage: &str) -> u64 {
    session.report().stages.iter().find(|report| report.stage == stage).map_or(0, |report| report.frames_out)
}

/// Returns the frames sent so far on the edge labelled `edge`.
fn edge_sent(session: &mentis_pipeline::Session, edge: &str) -> u64 {
    session.report().edges.iter().find(|report| report.edge == edge).map_or(0, |report| report.sent)
}

/// Runs `llm -> tts -> speaker`, sends a long reply as turn 1, queues an
/// interrupt for turn 1 as soon as its first audio frame arrives, then
/// sends a short turn 2.
async fn interrupt_after_first_frame<E: SpeechEngine>(tts: Tts<E>) -> Interrupted {
    // One 20 ms frame of room on each audio edge, so the stage cannot run
    // ahead of the listener, as in front of a speaker that plays in real time.
    let audio_edge = EdgeConfig::lossless(1);
    let format = PortFormat::Audio(tts.format());
    let stage = tts.spec().name.to_string();
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let (input, source) = ChannelSource::new(name("llm"), PortFormat::Text, EdgeConfig::lossless(8));
    let (sink, mut output) = ChannelSink::new(name("speaker"), format, audio_edge);
    let source = graph.add(source);
    let tts = graph.add(processor(tts));
    let sink = graph.add(sink);
    graph.connect(source, tts, EdgeConfig::lossless(8)).connect(tts, sink, audio_edge);
    let session = graph.build().expect("valid graph").start(SESSION);
    let turns = session.turns().clone();

    input.send(text_frame(1, LONG_TEXT, true)).await.expect("pipeline running");
    let first = loop {
        let frame = output.recv().await.expect("the stage speaks turn 1");
        if frame.as_audio().is_some() {
            break frame;
        }
    };
    assert_eq!(first.meta.turn, TurnId(1));

    // Queue the interrupt, and wait until it is on the stage's input edge
    // (the hop through the source task takes a moment on a busy machine).
    // The listener reads nothing meanwhile, so the stage is held at a full edge.
    input.send(control_frame(1, Control::Interrupt)).await.expect("pipeline running");
    let deadline = Instant::now() + Duration::from_secs(5);
    while edge_sent(&session, &format!("llm -> {stage}")) < 2 {
        assert!(Instant::now() < deadline, "the interrupt reached the stage's input edge within 5 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let emitted_at_interrupt = frames_out(&session, &stage);

    let mut result = Interrupted { emitted_after: 0, received_after: 0, next_turn: 0, discarded: 0 };
    while let Some(frame) = output.recv().await {
        match (&frame.payload, frame.meta.turn.0) {
            (Payload::Audio(_), 1) => result.received_after += 1,
            (Payload::Control(Control::Interrupt), _) => {
                // Everything the stage sent since, but the forwarded interrupt itself.
                result.emitted_after = frames_out(&session, &stage).saturating_sub(emitted_at_interrupt + 1);
                input.send(text_frame(2, "Okay.", true)).await.expect("pipeline running");
            }
            (Payload::Audio(_), 2) => {
                if result.next_turn == 0 {
                    // The second turn is heard: end the session.
                    input.send(control_frame(2, Control::EndOfStream)).await.expect("pipeline running");
                }
                result.next_turn += 1;
            }
            _ => {}
        }
    }
    drop(input);

    let report = session.wait().await.expect("clean end");
    result.discarded = report
        .edges
        .iter()
        .flat_map(|edge| &edge.drops)
        .filter(|(reason, _)| *reason == DropReason::Interrupted)
        .map(|(_, count)| count)
        .sum();
    assert!(turns.get(TurnId(1), TurnMark::FirstTtsAudio).is_some(), "first audio of turn 1 is marked");
    assert!(turns.get(TurnId(2), TurnMark::FirstTtsAudio).is_some(), "first audio of turn 2 is marked");
    result
}

fn check_interrupted(engine: &str, result: &Interrupted) {
    println!("{engine}: interrupt after the first frame: {result:?}");
    assert!(result.emitted_after <= 1, "{engine} emitted {} frames after the interrupt", result.emitted_after);
    // Four frames fit on the way: the one the stage was blocked sending when
    // the interrupt came (counted as emitted before it), one on the 1-frame
    // edge, one held by the sink stage while it sends, and one in the sink's
    // own 1-frame output channel.
    let in_flight = 4 + result.emitted_after as usize;
    assert!(
        result.received_after <= in_flight,
        "{engine}: {} frames of the interrupted turn arrived after the interrupt; at most {in_flight} were on the way",
        result.received_after
    );
    assert!(result.next_turn > 0, "{engine} speaks the next turn after an interrupt");
}

#[cfg(feature = "flite")]
mod flite {
    use mentis_stages::tts::FliteTts;

    use super::*;

    #[test]
    fn flite_speaks_two_sentences() {
        let mut tts = FliteTts::slt(name("flite")).expect("flite and its slt voice load (Debian flite1-dev)");
        assert_eq!(tts.format().sample_rate, 16_000, "slt speaks at 16 kHz");
        let speech = speak(&mut tts, 1, TEXT);
        check_plausible("flite", &speech);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flite_interrupt_stops_within_frame() {
        let tts = FliteTts::slt(name("flite")).expect("flite and its slt voice load (Debian flite1-dev)");
        let result = interrupt_after_first_frame(tts).await;
        check_interrupted("flite", &result);
    }
}

#[cfg(feature = "piper")]
mod piper {
    use mentis_stages::tts::piper::VoiceConfig;
    use mentis_stages::tts::{PiperConfig, PiperTts};

    use super::*;

    fn joe() -> PiperTts {
        PiperTts::piper(name("piper"), PiperConfig::joe())
            .expect("the Piper voice, espeak-ng and ONNX Runtime load (run scripts/setup)")
    }

    #[test]
    fn piper_speaks_two_sentences() {
        let mut tts = joe();
        let json = VoiceConfig::from_file(&PiperConfig::joe().voice_config_path).expect("voice configuration");
        assert_eq!(json.sample_rate, 22_050, "en_US-joe-medium's JSON gives 22,050 Hz");
        assert_eq!(tts.format().sample_rate, json.sample_rate, "frames carry the JSON's rate");

        // The first call includes ONNX Runtime's warm-up; time the second.
        speak(&mut tts, 1, "Warm up.");
        let speech = speak(&mut tts, 2, TEXT);
        check_plausible("piper", &speech);
    }

    #[test]
    fn piper_phonemes_keep_clause_marks() {
        let tts = joe();
        let phonemes = tts.engine().phonemes("Hello there, how are you?").expect("espeak-ng phonemizes");
        println!("phonemes: {phonemes}");
        assert!(phonemes.contains(", "), "comma kept between clauses: {phonemes}");
        assert!(phonemes.ends_with('?'), "final question mark kept: {phonemes}");
        assert!(phonemes.contains('ð'), "IPA output, not espeak's ASCII names: {phonemes}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn piper_interrupt_stops_within_frame() {
        let result = interrupt_after_first_frame(joe()).await;
        check_interrupted("piper", &result);
    }
}
