//! Edge behaviour: overflow policies, the priority lane, media-time capacity,
//! interrupts and drop accounting.

mod common;

use std::time::Duration;

use common::{audio, control, text};
use mentis_pipeline::edge::{Sent, TryRecv, channel};
use mentis_pipeline::{Control, DropReason, EdgeConfig, Frame, OverflowPolicy, TurnId};
use proptest::prelude::*;

fn drain(receiver: &mut mentis_pipeline::edge::Receiver) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let TryRecv::Frame(frame) = receiver.try_recv() {
        frames.push(frame);
    }
    frames
}

#[tokio::test]
async fn interrupt_overtakes_thousand_queued_frames() {
    let (sender, mut receiver) = channel("vad -> stt", EdgeConfig::lossless(2_000));
    for seq in 0..1_000 {
        sender.send(audio(seq, TurnId(2))).await.expect("receiver alive");
    }
    sender.send(control(TurnId(1), Control::Interrupt)).await.expect("receiver alive");

    let first = receiver.recv().await.expect("a frame");
    assert_eq!(first.as_control(), Some(&Control::Interrupt));
    let rest = drain(&mut receiver);
    assert_eq!(rest.len(), 1_000, "turn 2 frames survive an interrupt of turn 1");
    assert!(rest.iter().enumerate().all(|(index, frame)| frame.meta.seq == index as u64));
}

#[tokio::test]
async fn interrupt_discards_queued_frames_of_its_turn() {
    let (sender, mut receiver) = channel("llm -> tts", EdgeConfig::lossless(64));
    for seq in 0..10 {
        sender.send(audio(seq, TurnId(3))).await.expect("receiver alive");
    }
    for seq in 10..15 {
        sender.send(audio(seq, TurnId(4))).await.expect("receiver alive");
    }
    sender.send(control(TurnId(3), Control::Interrupt)).await.expect("receiver alive");

    let frames = drain(&mut receiver);
    assert_eq!(frames[0].as_control(), Some(&Control::Interrupt));
    let kept: Vec<u64> = frames[1..].iter().map(|frame| frame.meta.seq).collect();
    assert_eq!(kept, vec![10, 11, 12, 13, 14]);
    assert_eq!(receiver.metrics().drops(DropReason::Interrupted), 10);
}

#[tokio::test]
async fn interrupt_keeps_frames_of_no_turn() {
    let (sender, mut receiver) = channel("capture -> vad", EdgeConfig::lossless(64));
    sender.send(audio(0, TurnId::NONE)).await.expect("receiver alive");
    sender.send(audio(1, TurnId(2))).await.expect("receiver alive");
    sender.send(audio(2, TurnId::NONE)).await.expect("receiver alive");
    sender.send(control(TurnId(2), Control::Interrupt)).await.expect("receiver alive");

    let frames = drain(&mut receiver);
    let kept: Vec<u64> = frames[1..].iter().map(|frame| frame.meta.seq).collect();
    assert_eq!(kept, vec![0, 2], "audio outside any turn is not part of the interrupted reply");
    assert_eq!(receiver.metrics().drops(DropReason::Interrupted), 1);
}

#[tokio::test]
async fn end_of_stream_stays_behind_data() {
    let (sender, mut receiver) = channel("a -> b", EdgeConfig::lossless(8));
    sender.send(audio(0, TurnId::NONE)).await.expect("receiver alive");
    sender.send(control(TurnId::NONE, Control::EndOfStream)).await.expect("receiver alive");
    let frames = drain(&mut receiver);
    assert_eq!(frames.len(), 2);
    assert!(frames[0].as_audio().is_some());
    assert_eq!(frames[1].as_control(), Some(&Control::EndOfStream));
}

#[tokio::test]
async fn media_time_limit_drops_oldest_audio() {
    let config = EdgeConfig::realtime_audio(Duration::from_millis(100));
    let (sender, mut receiver) = channel("mic -> vad", config);
    for seq in 0..10 {
        sender.send(audio(seq, TurnId::NONE)).await.expect("receiver alive");
    }
    let kept: Vec<u64> = drain(&mut receiver).iter().map(|frame| frame.meta.seq).collect();
    assert_eq!(kept, vec![5, 6, 7, 8, 9], "100 ms holds five 20 ms frames, the newest ones");
    assert_eq!(receiver.metrics().drops(DropReason::Oldest), 5);
}

#[tokio::test]
async fn oversized_frame_accepted_when_empty() {
    let config = EdgeConfig::lossless(8).with_max_audio(Duration::from_millis(10));
    let (sender, mut receiver) = channel("a -> b", config);
    let sent = sender.send(audio(0, TurnId::NONE)).await.expect("receiver alive");
    assert_eq!(sent, Sent::Queued, "a 20 ms frame enters an empty 10 ms edge");
    assert_eq!(drain(&mut receiver).len(), 1);
}

#[tokio::test]
async fn block_policy_waits_for_room() {
    let (sender, mut receiver) = channel("llm -> text", EdgeConfig::lossless(2));
    sender.send(text(0, "a")).await.expect("receiver alive");
    sender.send(text(1, "b")).await.expect("receiver alive");

    let blocked = tokio::spawn(async move {
        sender.send(text(2, "c")).await.expect("receiver alive");
        sender
    });
    tokio::task::yield_now().await;
    assert!(!blocked.is_finished(), "a full Block edge makes the sender wait");

    assert_eq!(receiver.recv().await.map(|frame| frame.meta.seq), Some(0));
    let sender = blocked.await.expect("sender task");
    assert_eq!(sender.metrics().sent(), 3);
    let rest: Vec<u64> = drain(&mut receiver).iter().map(|frame| frame.meta.seq).collect();
    assert_eq!(rest, vec![1, 2]);
    assert_eq!(receiver.report().blocked_sends, 1);
}

#[tokio::test]
async fn drop_newest_keeps_queue() {
    let config = EdgeConfig::lossless(3).with_policy(OverflowPolicy::DropNewest);
    let (sender, mut receiver) = channel("a -> b", config);
    for seq in 0..5 {
        let sent = sender.send(audio(seq, TurnId::NONE)).await.expect("receiver alive");
        assert_eq!(sent == Sent::Dropped, seq >= 3, "frame {seq}");
    }
    let kept: Vec<u64> = drain(&mut receiver).iter().map(|frame| frame.meta.seq).collect();
    assert_eq!(kept, vec![0, 1, 2]);
    assert_eq!(receiver.metrics().drops(DropReason::Newest), 2);
}

#[tokio::test]
async fn send_after_receiver_dropped_returns_frame() {
    let (sender, receiver) = channel("a -> b", EdgeConfig::lossless(4));
    drop(receiver);
    let error = sender.send(audio(9, TurnId::NONE)).await.expect_err("receiver is gone");
    assert_eq!(error.0.meta.seq, 9);
    assert_eq!(sender.metrics().drops(DropReason::ReceiverClosed), 1);
}

#[tokio::test]
async fn blocked_sender_released_when_receiver_drops() {
    let (sender, receiver) = channel("a -> b", EdgeConfig::lossless(1));
    sender.send(text(0, "a")).await.expect("receiver alive");
    let blocked = tokio::spawn(async move { sender.send(text(1, "b")).await.is_err() });
    tokio::task::yield_now().await;
    drop(receiver);
    assert!(blocked.await.expect("sender task"), "the waiting send fails instead of hanging");
}

#[tokio::test]
async fn closed_after_last_sender_and_empty() {
    let (sender, mut receiver) = channel("a -> b", EdgeConfig::lossless(4));
    let second = sender.clone();
    sender.send(text(0, "x")).await.expect("receiver alive");
    drop(sender);
    assert!(receiver.recv().await.is_some());
    assert!(matches!(receiver.try_recv(), TryRecv::Empty), "one sender remains");
    drop(second);
    assert!(receiver.recv().await.is_none());
}

#[test]
fn invalid_configs_name_the_field() {
    let zero = EdgeConfig::lossless(0);
    assert_eq!(zero.validate(), Err("capacity must be at least 1 frame"));
    let no_audio = EdgeConfig::lossless(4).with_max_audio(Duration::ZERO);
    assert_eq!(no_audio.validate(), Err("max_audio must be above zero"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, .. ProptestConfig::default() })]

    /// Under Block, with a slow consumer that takes at random moments,
    /// every frame arrives once and in order.
    #[test]
    fn block_loses_and_reorders_nothing(capacity in 1_usize..16, count in 0_u64..300, pattern in prop::collection::vec(0_u8..4, 1..32)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async move {
            let (sender, mut receiver) = channel("a -> b", EdgeConfig::lossless(capacity));
            let producer = tokio::spawn(async move {
                for seq in 0..count {
                    sender.send(text(seq, "t")).await.expect("receiver alive");
                }
            });
            let mut received = Vec::new();
            let mut step = 0;
            while let Some(frame) = receiver.recv().await {
                received.push(frame.meta.seq);
                for _ in 0..pattern[step % pattern.len()] {
                    tokio::task::yield_now().await;
                }
                step += 1;
            }
            producer.await.expect("producer");
            let expected: Vec<u64> = (0..count).collect();
            assert_eq!(received, expected);
            assert_eq!(receiver.metrics().drops(DropReason::Oldest), 0);
        });
    }

    /// Under DropOldest, delivered + dropped = sent, delivery is in order,
    /// and the last frames sent are the ones still queued at the end.
    #[test]
    fn drop_oldest_accounts_for_every_frame(capacity in 1_usize..16, count in 0_u64..300, takes in prop::collection::vec(0_usize..4, 1..32)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async move {
            let config = EdgeConfig::lossless(capacity).with_policy(OverflowPolicy::DropOldest);
            let (sender, mut receiver) = channel("a -> b", config);
            let mut delivered = Vec::new();
            for seq in 0..count {
                sender.send(audio(seq, TurnId::NONE)).await.expect("receiver alive");
                for _ in 0..takes[seq as usize % takes.len()] {
                    if let TryRecv::Frame(frame) = receiver.try_recv() {
                        delivered.push(frame.meta.seq);
                    }
                }
            }
            let tail: Vec<u64> = drain(&mut receiver).iter().map(|frame| frame.meta.seq).collect();
            let dropped = receiver.metrics().drops(DropReason::Oldest);
            assert_eq!(delivered.len() as u64 + tail.len() as u64 + dropped, count);
            let newest: Vec<u64> = (count.saturating_sub(tail.len() as u64)..count).collect();
            assert_eq!(tail, newest, "the queue ends holding the newest frames");
            delivered.extend(tail);
            assert!(delivered.windows(2).all(|pair| pair[0] < pair[1]), "in order");
        });
    }
}
