//! Interruption on a scripted timeline, with the real on-device models.
//!
//! Each case builds a recording of two LibriVox utterances separated by a
//! chosen gap and runs `mentis::conversation` on it in real time, so the
//! second utterance interrupts the reply to the first at a chosen moment:
//! before any reply audio, while reply audio plays, and after the LLM has
//! finished while synthesized audio is still queued.
//! In every case the output must be silent within 50 ms of the voice
//! activity detector announcing the new speech, and the history must keep
//! only what was heard of the interrupted reply.

use std::path::Path;
use std::time::Duration;

use mentis::conversation::{self, Conversation, ConversationConfig, DEFAULT_SYSTEM_PROMPT, TtsChoice, VadChoice};
use mentis::pipeline::{SessionId, TurnId};
use mentis::stages::llm::StopReason;
use mentis::stages::playback::Pacing;
use mentis::stages::wav::open_wav;

const RECORDINGS: &str = "/usr/share/pocketsphinx/test/data/librivox";
const FIRST: &str = "sense_and_sensibility_01_austen_64kb-0880";
const SECOND: &str = "sense_and_sensibility_01_austen_64kb-0930";

/// Silence the output must reach after speech is announced: the interrupt's
/// trip to playback plus the frame already playing.
const SILENT_WITHIN: Duration = Duration::from_millis(50);
/// Length of the frames playback releases; the last one plays out.
const FRAME: Duration = Duration::from_millis(20);

fn read_clip(name: &str) -> Vec<i16> {
    let path = Path::new(RECORDINGS).join(format!("{name}.wav"));
    let mut reader = open_wav(&path).unwrap_or_else(|error| panic!("{}: {error}; run scripts/setup", path.display()));
    let mut samples = Vec::new();
    while reader.read_i16(16_000, &mut samples).expect("readable clip") > 0 {}
    samples
}

/// Writes a 16 kHz mono 16-bit WAV of the two clips with `gap` of silence between.
fn write_two_utterances(path: &Path, gap: Duration) {
    let mut samples = read_clip(FIRST);
    samples.extend(std::iter::repeat_n(0_i16, (gap.as_secs_f64() * 16_000.0) as usize));
    samples.extend(read_clip(SECOND));

    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + samples.len() * 2);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16_u32.to_le_bytes());
    bytes.extend_from_slice(&1_u16.to_le_bytes());
    bytes.extend_from_slice(&1_u16.to_le_bytes());
    bytes.extend_from_slice(&16_000_u32.to_le_bytes());
    bytes.extend_from_slice(&32_000_u32.to_le_bytes());
    bytes.extend_from_slice(&2_u16.to_le_bytes());
    bytes.extend_from_slice(&16_u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    std::fs::write(path, bytes).expect("write the scripted recording");
}

/// What a run leaves to check, once its session has ended.
struct Outcome {
    log: conversation::ConversationLog,
    playback: mentis::stages::playback::PlaybackLog,
    history: mentis::stages::llm::SharedHistory,
    turn_times: mentis::stages::playback::TurnEnds,
    generations: mentis::stages::llm::GenerationLog,
}

fn run(gap: Duration, max_tokens: u32) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("two.wav");
    write_two_utterances(&input, gap);
    let config = ConversationConfig {
        input,
        output: dir.path().join("reply.wav"),
        pacing: Pacing::RealTime,
        vad: VadChoice::Webrtc,
        tts: TtsChoice::Flite,
        system_prompt: DEFAULT_SYSTEM_PROMPT.to_owned(),
        max_tokens,
        end_of_turn_silence: None,
        llm_threads: 1,
        live: false,
        pipeline: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let Conversation { session, log, playback, history, turn_times, generations, .. } =
            conversation::start(&config, SessionId(1)).expect("conversation builds; run scripts/setup");
        let report = session.wait().await.expect("conversation runs");
        assert!(report.turns.len() >= 2, "two turns: {:?}", report.turns);
        Outcome { log, playback, history, turn_times, generations }
    })
}

/// Checks what must hold whenever turn 1's reply is interrupted by turn 2.
fn assert_silent_and_trimmed(conversation: &Outcome) {
    let announced = conversation.turn_times.speech_started(TurnId(2)).expect("turn 2's speech was announced");
    // A transcript interrupted before the LLM took it never enters the history.
    let heard = conversation.history.lock().reply(TurnId(1)).map(str::to_owned).unwrap_or_default();
    match conversation.playback.reply(TurnId(1)) {
        None => assert_eq!(heard, "", "nothing of the reply played, so nothing is kept"),
        Some(reply) => {
            assert!(reply.interrupted, "{reply:?}");
            let stopped = reply.stopped_at.expect("the cut time is recorded");
            let silent_after = stopped.saturating_duration_since(announced) + FRAME;
            assert!(silent_after <= SILENT_WITHIN, "output silent {silent_after:?} after speech was announced");
            let full = conversation.log.turns().get(&TurnId(1)).map(|text| text.reply.clone()).unwrap_or_default();
            assert!(heard.len() < full.trim().len().max(1), "the history keeps less than the reply: {heard:?} of {full:?}");
            assert!(full.starts_with(heard.as_str()) || heard.is_empty(), "{heard:?} is a prefix of {full:?}");
        }
    }
}

#[test]
fn interrupt_before_reply_audio() {
    // The second utterance starts 1 s after the first ends: the end-of-turn
    // silence (700 ms) has passed, but speech recognition is still running.
    let conversation = run(Duration::from_millis(1_000), 48);
    let played = conversation.playback.reply(TurnId(1)).map_or(Duration::ZERO, |reply| reply.played);
    assert_eq!(played, Duration::ZERO, "no reply audio played before the interrupt");
    assert_silent_and_trimmed(&conversation);
}

#[test]
fn interrupt_during_reply_audio() {
    // The reply's first audio plays about 2 s after the first utterance ends.
    let conversation = run(Duration::from_millis(2_600), 64);
    let reply = conversation.playback.reply(TurnId(1)).expect("reply audio started");
    assert!(reply.played > Duration::ZERO, "{reply:?}");
    assert!(reply.played < reply.synthesized, "the interrupt cut the reply: {reply:?}");
    assert_silent_and_trimmed(&conversation);
}

#[test]
fn interrupt_after_llm_finished() {
    // The whole reply is generated and synthesized, and still playing.
    let conversation = run(Duration::from_millis(4_500), 24);
    let reply = conversation.playback.reply(TurnId(1)).expect("reply audio started");
    assert!(reply.played > Duration::ZERO, "{reply:?}");
    assert!(reply.played < reply.synthesized, "audio was still queued: {reply:?}");
    let generation = conversation.generations.for_turn(TurnId(1)).expect("the LLM answered turn 1");
    assert_ne!(generation.stop, StopReason::Interrupted, "the LLM had finished: {generation:?}");
    assert!(
        generation.emitted_at.last().is_some_and(|last| *last < conversation.turn_times.speech_started(TurnId(2)).expect("announced")),
        "the last token came before the new speech"
    );
    assert_silent_and_trimmed(&conversation);
}
