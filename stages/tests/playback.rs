//! Reply playback: placement on the timeline, real-time release, interrupts.

use std::time::Duration;

use mentis_pipeline::basic::{ChannelSink, ChannelSource};
use mentis_pipeline::edge::{Receiver, Sender};
use mentis_pipeline::{
    AudioData, AudioFormat, Control, EdgeConfig, Frame, FrameMeta, GraphBuilder, MediaTime, PortFormat,
    PrivacyPolicy, PrivacyTier, Session, SessionId, StageName, TurnClock, TurnId, TurnMark,
};
use mentis_stages::playback::{Pacing, Playback, PlaybackLog};

const FORMAT: AudioFormat = AudioFormat::mono_f32(16_000);

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

fn reply_frame(turn: u64, seq: u64) -> Frame {
    let meta = FrameMeta { session: SessionId(1), turn: TurnId(turn), seq, timestamp: MediaTime::ZERO };
    Frame::audio(meta, AudioData::from_f32(16_000, 1, vec![0.1_f32; 320]).expect("valid audio"))
}

fn event(turn: u64, at: Duration, control: Control) -> Frame {
    let meta = FrameMeta { session: SessionId(1), turn: TurnId(turn), seq: 0, timestamp: MediaTime::from_duration(at) };
    Frame::control(meta, control)
}

fn start(pacing: Pacing) -> (Sender, Session, Receiver, PlaybackLog, TurnClock) {
    let log = PlaybackLog::default();
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let (input, source) = ChannelSource::new(name("tts"), PortFormat::Audio(FORMAT), EdgeConfig::lossless(64));
    let playback = Playback::new(name("playback"), FORMAT, pacing, log.clone());
    let (sink, output) = ChannelSink::new(name("writer"), PortFormat::Audio(FORMAT), EdgeConfig::lossless(256));
    graph.chain(vec![Box::new(source), Box::new(playback), Box::new(sink)], EdgeConfig::lossless(64));
    let session = graph.build().expect("valid graph").start(SessionId(1));
    let turns = session.turns().clone();
    (input, session, output, log, turns)
}

async fn audio_timestamps(output: &mut Receiver) -> Vec<Duration> {
    let mut timestamps = Vec::new();
    while let Some(frame) = output.recv().await {
        if frame.as_audio().is_some() {
            timestamps.push(frame.meta.timestamp.as_duration());
        }
    }
    timestamps
}

#[tokio::test]
async fn fast_playback_places_reply_after_turn_end() {
    let (input, session, mut output, log, turns) = start(Pacing::AsFastAsPossible);
    turns.mark(TurnId(1), TurnMark::EndOfSpeech);
    input.send(event(1, Duration::from_secs(2), Control::EndOfTurn)).await.expect("running");
    for seq in 0..5 {
        input.send(reply_frame(1, seq)).await.expect("running");
    }
    drop(input);
    session.wait().await.expect("clean end");

    let timestamps = audio_timestamps(&mut output).await;
    assert_eq!(timestamps.len(), 5);
    assert!(timestamps[0] >= Duration::from_secs(2), "the reply starts after the turn ends: {timestamps:?}");
    for pair in timestamps.windows(2) {
        assert_eq!(pair[1] - pair[0], Duration::from_millis(20), "frames are contiguous");
    }
    let reply = log.reply(TurnId(1)).expect("turn 1 played");
    assert_eq!(reply.synthesized, Duration::from_millis(100));
    assert_eq!(reply.played, Duration::from_millis(100));
    assert!(!reply.interrupted);
    assert!(turns.get(TurnId(1), TurnMark::FirstAudioOut).is_some());
}

#[tokio::test]
async fn realtime_interrupt_cuts_reply() {
    let (input, session, mut output, log, turns) = start(Pacing::RealTime);
    turns.mark(TurnId(1), TurnMark::EndOfSpeech);
    input.send(event(1, Duration::from_secs(1), Control::EndOfTurn)).await.expect("running");
    // One second of reply, all synthesized at once, as a fast TTS would.
    for seq in 0..50 {
        input.send(reply_frame(1, seq)).await.expect("running");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    input.send(event(1, Duration::from_millis(1_300), Control::Interrupt)).await.expect("running");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(input);
    session.wait().await.expect("clean end");

    let reply = log.reply(TurnId(1)).expect("turn 1 played");
    assert!(reply.interrupted);
    assert_eq!(reply.synthesized, Duration::from_secs(1));
    let played_ms = reply.played.as_millis();
    assert!((240..=400).contains(&played_ms), "about 300 ms played before the interrupt, got {played_ms} ms");
    let timestamps = audio_timestamps(&mut output).await;
    assert_eq!(timestamps.len() as u128, played_ms / 20, "only played frames reach the output");
}

#[tokio::test]
async fn next_reply_starts_after_previous() {
    let (input, session, mut output, log, _turns) = start(Pacing::AsFastAsPossible);
    input.send(event(1, Duration::from_millis(500), Control::EndOfTurn)).await.expect("running");
    for seq in 0..50 {
        input.send(reply_frame(1, seq)).await.expect("running");
    }
    // The second turn ended before the first reply would have finished.
    input.send(event(2, Duration::from_millis(800), Control::EndOfTurn)).await.expect("running");
    for seq in 50..55 {
        input.send(reply_frame(2, seq)).await.expect("running");
    }
    drop(input);
    session.wait().await.expect("clean end");

    let first = log.reply(TurnId(1)).expect("turn 1");
    let second = log.reply(TurnId(2)).expect("turn 2");
    assert!(second.start >= first.start.add(first.synthesized), "replies never overlap: {first:?} {second:?}");
    assert_eq!(audio_timestamps(&mut output).await.len(), 55);
}
