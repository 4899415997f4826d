//! The timeout and retry wrappers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{SESSION, name};
use mentis_pipeline::basic::{ChannelSink, ChannelSource};
use mentis_pipeline::wrap::{Fallback, Retry, RetryPolicy, Timeout};
use mentis_pipeline::{
    EdgeConfig, Frame, GraphBuilder, PortFormat, PrivacyPolicy, PrivacyTier, Stage, StageError, StageFuture, StageIo,
    StageName, StageSpec,
};

/// Echoes text frames; hangs on the frame whose sequence number is `hang_on`.
struct Echo {
    name: StageName,
    hang_on: Option<u64>,
}

impl Stage for Echo {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Text, PortFormat::Text)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            while let Some(frame) = io.inbox.recv().await {
                if Some(frame.meta.seq) == self.hang_on {
                    std::future::pending::<()>().await;
                }
                io.outbox.send(frame).await?;
            }
            Ok(())
        })
    }
}

fn graph_around(stage: impl Stage) -> (mentis_pipeline::edge::Sender, mentis_pipeline::Session, mentis_pipeline::edge::Receiver) {
    let tier = if stage.spec().egress == mentis_pipeline::Egress::None { PrivacyTier::OnDevice } else { PrivacyTier::Cloud };
    let mut graph = GraphBuilder::new(self_hosted_with(tier));
    let (input, source) = ChannelSource::new(name("input"), PortFormat::Text, EdgeConfig::lossless(16));
    let (sink, output) = ChannelSink::new(name("output"), PortFormat::Text, EdgeConfig::lossless(64));
    let source = graph.add(source);
    let middle = graph.add(stage);
    let sink = graph.add(sink);
    graph.connect(source, middle, EdgeConfig::lossless(16)).connect(middle, sink, EdgeConfig::lossless(16));
    (input, graph.build().expect("valid graph").start(SESSION), output)
}

#[tokio::test(start_paused = true)]
async fn timeout_fails_stalled_stage() {
    let echo = Echo { name: name("llm"), hang_on: Some(2) };
    let (input, session, _output) = graph_around(Timeout::new(echo, Duration::from_secs(2)));
    for seq in 0..4 {
        input.send(common::text(seq, "hello")).await.expect("running");
    }
    let error = session.wait().await.expect_err("the stage stalls on frame 2");
    assert_eq!(error.stage().as_str(), "llm");
    let message = error.to_string();
    assert!(message.contains("spent more than 2s on one text frame"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn timeout_leaves_healthy_stage_alone() {
    let echo = Echo { name: name("llm"), hang_on: None };
    let (input, session, mut output) = graph_around(Timeout::new(echo, Duration::from_millis(500)));
    for seq in 0..3 {
        input.send(common::text(seq, "hi")).await.expect("running");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(input);
    session.wait().await.expect("idle time between frames is not a timeout");
    let mut received = 0;
    while let Some(frame) = output.recv().await {
        if frame.as_control().is_none() {
            received += 1;
        }
    }
    assert_eq!(received, 3);
}

/// Fails with a retryable error on its first `failures` runs, when it sees the
/// frame numbered `fail_at`, having emitted the frames before it.
struct Flaky {
    name: StageName,
    fail_at: u64,
    runs: Arc<AtomicU32>,
    failures: u32,
}

impl Stage for Flaky {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Text, PortFormat::Text)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let run = self.runs.fetch_add(1, Ordering::SeqCst);
            while let Some(frame) = io.inbox.recv().await {
                if frame.meta.seq == self.fail_at && run < self.failures {
                    return Err(StageError::retryable("connection reset by peer"));
                }
                io.outbox.send(frame).await?;
            }
            Ok(())
        })
    }
}

fn flaky_factory(runs: Arc<AtomicU32>, failures: u32) -> impl FnMut() -> Result<Box<dyn Stage>, StageError> + Send + 'static {
    move || {
        Ok(Box::new(Flaky { name: name("stt"), fail_at: 3, runs: Arc::clone(&runs), failures }) as Box<dyn Stage>)
    }
}

fn seqs(frames: &[Frame]) -> Vec<u64> {
    frames.iter().filter(|frame| frame.as_control().is_none()).map(|frame| frame.meta.seq).collect()
}

#[tokio::test(start_paused = true)]
async fn retry_replays_unanswered_frames() {
    let runs = Arc::new(AtomicU32::new(0));
    let policy = RetryPolicy { max_retries: 3, ..RetryPolicy::default() };
    let retry = Retry::new(flaky_factory(Arc::clone(&runs), 2), policy).expect("factory works");
    let (input, session, mut output) = graph_around(retry);
    for seq in 0..6 {
        input.send(common::text(seq, "w")).await.expect("running");
    }
    drop(input);
    session.wait().await.expect("the third attempt succeeds");

    let mut frames = Vec::new();
    while let Some(frame) = output.recv().await {
        frames.push(frame);
    }
    assert_eq!(seqs(&frames), vec![0, 1, 2, 3, 4, 5], "nothing lost or repeated");
    // One run to read the spec, then two failures and a success.
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_limit() {
    let runs = Arc::new(AtomicU32::new(0));
    let policy = RetryPolicy { max_retries: 2, ..RetryPolicy::default() };
    let retry = Retry::new(flaky_factory(Arc::clone(&runs), u32::MAX), policy).expect("factory works");
    let (input, session, _output) = graph_around(retry);
    for seq in 0..6 {
        input.send(common::text(seq, "w")).await.expect("running");
    }
    let error = session.wait().await.expect_err("every attempt fails");
    assert_eq!(error.stage().as_str(), "stt");
    assert!(error.to_string().contains("connection reset"), "{error}");
    assert_eq!(runs.load(Ordering::SeqCst), 3, "the first attempt and two retries");
}

#[test]
fn backoff_grows_and_caps() {
    let policy = RetryPolicy {
        max_retries: 10,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_replay: 8,
    };
    assert_eq!(policy.backoff(1, 1.0), Duration::from_millis(100));
    assert_eq!(policy.backoff(2, 1.0), Duration::from_millis(200));
    assert_eq!(policy.backoff(3, 0.0), Duration::from_millis(200), "half the 400 ms step");
    assert_eq!(policy.backoff(9, 1.0), Duration::from_secs(1));
}

/// A network backend stand-in: echoes frames, declares `endpoint`, and fails
/// with a retryable error at frame 3 when `fails`.
struct Backend {
    name: StageName,
    endpoint: &'static str,
    fails: bool,
    runs: Arc<AtomicU32>,
}

impl Stage for Backend {
    fn spec(&self) -> StageSpec {
        let url = url::Url::parse(self.endpoint).expect("test URL");
        StageSpec::new(self.name.clone(), PortFormat::Text, PortFormat::Text)
            .with_egress(mentis_pipeline::Egress::Endpoint(url))
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            self.runs.fetch_add(1, Ordering::SeqCst);
            while let Some(frame) = io.inbox.recv().await {
                if self.fails && frame.meta.seq == 3 {
                    return Err(StageError::retryable("the backend went away"));
                }
                io.outbox.send(frame).await?;
            }
            Ok(())
        })
    }
}

fn backend(endpoint: &'static str, fails: bool, runs: &Arc<AtomicU32>) -> Box<dyn Stage> {
    Box::new(Backend { name: name("stt"), endpoint, fails, runs: Arc::clone(runs) })
}

fn self_hosted() -> PrivacyPolicy {
    self_hosted_with(PrivacyTier::Cloud)
}

/// A policy of `tier` whose resolver knows the test hosts, so no name is looked up.
fn self_hosted_with(tier: PrivacyTier) -> PrivacyPolicy {
    PrivacyPolicy::new(tier).with_resolver(Arc::new(
        mentis_pipeline::privacy::StaticResolver::new()
            .with_host("asr.lan", &["192.168.1.20".parse().expect("address")])
            .with_host("asr2.lan", &["10.0.0.7".parse().expect("address")])
            .with_host("api.example.test", &["203.0.113.5".parse().expect("address")]),
    ))
}

#[tokio::test(start_paused = true)]
async fn fallback_replays_unanswered_frames_to_the_backup() {
    let (primary_runs, backup_runs) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let fallback = Fallback::new(
        vec![backend("http://asr.lan:8080/", true, &primary_runs), backend("http://asr2.lan:9000/", false, &backup_runs)],
        &self_hosted(),
    )
    .expect("both self-hosted");
    assert_eq!(
        fallback.spec().egress,
        mentis_pipeline::Egress::Endpoints(vec![
            url::Url::parse("http://asr.lan:8080/").expect("url"),
            url::Url::parse("http://asr2.lan:9000/").expect("url"),
        ]),
        "the graph checks every backend's endpoint"
    );

    let (input, session, mut output) = graph_around(fallback);
    for seq in 0..6 {
        input.send(common::text(seq, "word")).await.expect("running");
    }
    drop(input);
    session.wait().await.expect("the backup finishes the stream");
    let mut frames = Vec::new();
    while let Some(frame) = output.recv().await {
        frames.push(frame);
    }
    assert_eq!(seqs(&frames), vec![0, 1, 2, 3, 4, 5], "frame 3 went to the backup, nothing lost or doubled");
    assert_eq!((primary_runs.load(Ordering::SeqCst), backup_runs.load(Ordering::SeqCst)), (1, 1));
}

#[test]
fn fallback_never_goes_to_a_less_private_backend() {
    let runs = Arc::new(AtomicU32::new(0));
    let error = Fallback::new(
        vec![backend("http://asr.lan:8080/", false, &runs), backend("https://api.example.test/v1", false, &runs)],
        &self_hosted(),
    )
    .expect_err("a cloud backup for a self-hosted primary");
    let message = error.to_string();
    assert!(message.contains("backup 1 (stt) is a cloud backend but the primary is self-hosted"), "{message}");

    // The other way round is allowed: a cloud primary may fall back to a self-hosted server.
    Fallback::new(
        vec![backend("https://api.example.test/v1", false, &runs), backend("http://asr.lan:8080/", false, &runs)],
        &self_hosted(),
    )
    .expect("a more private backup");
}

#[tokio::test(start_paused = true)]
async fn fallback_fails_when_every_backend_failed() {
    let runs = Arc::new(AtomicU32::new(0));
    let fallback = Fallback::new(
        vec![backend("http://asr.lan:8080/", true, &runs), backend("http://asr2.lan:9000/", true, &runs)],
        &self_hosted(),
    )
    .expect("both self-hosted");
    let (input, session, _output) = graph_around(fallback);
    for seq in 0..6 {
        if input.send(common::text(seq, "word")).await.is_err() {
            break;
        }
    }
    let error = session.wait().await.expect_err("both backends fail");
    assert!(error.to_string().contains("the backend went away"), "{error}");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
