//! Running sessions: draining, cancellation, errors, blocking processors,
//! fan-out and fan-in, and the metrics report.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{SESSION, format16k, name};
use mentis_pipeline::basic::{ChannelSink, ChannelSource, CountingSink, PassThrough, ToneSource};
use mentis_pipeline::{
    Control, EdgeConfig, Emitter, Execution, Frame, GraphBuilder, PortFormat, PrivacyPolicy, PrivacyTier,
    Processor, SessionError, Stage, StageError, StageFuture, StageIo, StageSpec, processor,
};

fn on_device() -> GraphBuilder {
    GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice))
}

#[tokio::test]
async fn chain_drains_in_order_at_end_of_stream() {
    let format = PortFormat::Audio(format16k());
    let mut graph = on_device();
    let (input, source) = ChannelSource::new(name("input"), format, EdgeConfig::lossless(16));
    let (sink, mut output) = ChannelSink::new(name("output"), format, EdgeConfig::lossless(1_000));
    let mut stages: Vec<Box<dyn Stage>> = vec![Box::new(source)];
    for index in 0..5 {
        stages.push(Box::new(PassThrough::new(name(&format!("pass{index}")), format)));
    }
    stages.push(Box::new(sink));
    graph.chain(stages, EdgeConfig::lossless(4));
    let session = graph.build().expect("valid graph").start(SESSION);

    let feeder = tokio::spawn(async move {
        for seq in 0..500 {
            input.send(common::audio(seq, mentis_pipeline::TurnId::NONE)).await.expect("pipeline running");
        }
    });
    let report = session.wait().await.expect("clean end");
    feeder.await.expect("feeder");

    let mut seqs = Vec::new();
    let mut end_of_stream = 0;
    while let Some(frame) = output.recv().await {
        match frame.as_control() {
            Some(Control::EndOfStream) => end_of_stream += 1,
            _ => seqs.push(frame.meta.seq),
        }
    }
    assert_eq!(seqs, (0..500).collect::<Vec<_>>());
    assert_eq!(end_of_stream, 1, "the sink forwards one end of stream");
    assert_eq!(report.total_drops(), 0);
    assert_eq!(report.stages.len(), 7);
    for stage in &report.stages[1..] {
        assert_eq!(stage.frames_in, 500, "{stage:?}");
    }
}

/// A stage that never finishes on its own: it waits on a channel that never receives.
struct Hang {
    name: mentis_pipeline::StageName,
}

impl Stage for Hang {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Any, PortFormat::None)
    }

    fn run<'a>(&'a mut self, _io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_every_task_quickly() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();

    let format = PortFormat::Audio(format16k());
    let mut graph = on_device();
    let source = graph.add(ToneSource::new(name("tone"), format16k(), Duration::from_millis(20), u64::MAX).paced());
    let mut previous = source;
    for index in 0..4 {
        let stage = graph.add(PassThrough::new(name(&format!("pass{index}")), format));
        graph.connect(previous, stage, EdgeConfig::lossless(8));
        previous = stage;
    }
    let hang = graph.add(Hang { name: name("hang") });
    graph.connect(previous, hang, EdgeConfig::lossless(8));
    let session = graph.build().expect("valid graph").start(SESSION);

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(session.live_tasks(), 6);
    assert_eq!(metrics.num_alive_tasks(), before + 6);

    let started = Instant::now();
    assert!(session.shutdown(Duration::from_millis(100)).await, "session stopped within 100 ms");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(100), "shutdown took {elapsed:?}");
    // A finished task is released by the worker that ran it, just after its
    // output reaches the join set; give that worker a moment.
    let mut polls = 0;
    while metrics.num_alive_tasks() > before && polls < 100 {
        tokio::time::sleep(Duration::from_micros(100)).await;
        polls += 1;
    }
    assert_eq!(metrics.num_alive_tasks(), before, "no stage task is left running");
    eprintln!("tasks released after {polls} polls of 100 µs");
}

struct FailAfter {
    name: mentis_pipeline::StageName,
    remaining: u32,
}

impl Processor for FailAfter {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Any, PortFormat::Any)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter) -> Result<(), StageError> {
        if self.remaining == 0 {
            return Err(StageError::fatal("model returned a tensor of the wrong shape"));
        }
        self.remaining -= 1;
        out.emit(frame);
        Ok(())
    }
}

#[tokio::test]
async fn stage_error_names_stage_and_stops_session() {
    let mut graph = on_device();
    let source = graph.add(ToneSource::new(name("tone"), format16k(), Duration::from_millis(20), u64::MAX));
    let fail = graph.add(processor(FailAfter { name: name("stt"), remaining: 3 }));
    let (sink, count) = CountingSink::new(name("sink"));
    let sink = graph.add(sink);
    graph.connect(source, fail, EdgeConfig::lossless(4));
    graph.connect(fail, sink, EdgeConfig::lossless(4));
    let session = graph.build().expect("valid graph").start(SESSION);

    let error = tokio::time::timeout(Duration::from_secs(5), session.wait())
        .await
        .expect("the session stops after the error")
        .expect_err("the stage failed");
    assert_eq!(error.stage().as_str(), "stt");
    assert!(matches!(error, SessionError::Stage { .. }));
    assert!(error.to_string().contains("wrong shape"), "{error}");
    assert!(count.load(Ordering::Relaxed) <= 3);
}

struct Panics {
    name: mentis_pipeline::StageName,
}

impl Processor for Panics {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Any, PortFormat::Any)
    }

    fn process(&mut self, _frame: Frame, _out: &mut Emitter) -> Result<(), StageError> {
        panic!("index out of bounds in test stage");
    }
}

#[tokio::test]
async fn stage_panic_reported_with_name() {
    let mut graph = on_device();
    let source = graph.add(ToneSource::new(name("tone"), format16k(), Duration::from_millis(20), 10));
    let broken = graph.add(processor(Panics { name: name("broken") }));
    let (sink, _count) = CountingSink::new(name("sink"));
    let sink = graph.add(sink);
    graph.connect(source, broken, EdgeConfig::lossless(4));
    graph.connect(broken, sink, EdgeConfig::lossless(4));
    let error = graph.build().expect("valid graph").start(SESSION).wait().await.expect_err("panic");
    assert_eq!(error.stage().as_str(), "broken");
    assert!(error.to_string().contains("index out of bounds"), "{error}");
}

/// Sleeps on its thread for each frame, like model inference.
struct SlowInference {
    name: mentis_pipeline::StageName,
    per_frame: Duration,
}

impl Processor for SlowInference {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Any, PortFormat::Any).with_execution(Execution::Blocking)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter) -> Result<(), StageError> {
        std::thread::sleep(self.per_frame);
        out.emit(frame);
        Ok(())
    }
}

/// On a single-threaded runtime, a blocking processor must leave the async
/// thread free: a ticker keeps ticking while inference sleeps.
#[tokio::test(flavor = "current_thread")]
async fn blocking_processor_leaves_async_thread_free() {
    let mut graph = on_device();
    let source = graph.add(ToneSource::new(name("tone"), format16k(), Duration::from_millis(20), 3));
    let slow = graph.add(processor(SlowInference { name: name("whisper"), per_frame: Duration::from_millis(100) }));
    let (sink, count) = CountingSink::new(name("sink"));
    let sink = graph.add(sink);
    graph.connect(source, slow, EdgeConfig::lossless(4));
    graph.connect(slow, sink, EdgeConfig::lossless(4));
    let session = graph.build().expect("valid graph").start(SESSION);

    let ticks = Arc::new(AtomicU64::new(0));
    let ticker_ticks = Arc::clone(&ticks);
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticker_ticks.fetch_add(1, Ordering::Relaxed);
        }
    });
    let report = session.wait().await.expect("clean end");
    ticker.abort();

    // Three frames reach the sink after about 300 ms of inference; the inbox
    // consumes end of stream.
    assert_eq!(count.load(Ordering::Relaxed), 3);
    assert!(ticks.load(Ordering::Relaxed) >= 15, "ticker ran {} times", ticks.load(Ordering::Relaxed));
    let whisper = report.stages.iter().find(|stage| stage.stage == "whisper").expect("whisper stage");
    assert!(whisper.processing_p50_micros >= 80_000.0, "{whisper:?}");
}

#[tokio::test]
async fn cancel_waits_for_blocking_thread() {
    let mut graph = on_device();
    let source = graph.add(ToneSource::new(name("tone"), format16k(), Duration::from_millis(20), u64::MAX));
    let slow = graph.add(processor(SlowInference { name: name("llm"), per_frame: Duration::from_millis(30) }));
    let (sink, _count) = CountingSink::new(name("sink"));
    let sink = graph.add(sink);
    graph.connect(source, slow, EdgeConfig::lossless(4));
    graph.connect(slow, sink, EdgeConfig::lossless(4));
    let session = graph.build().expect("valid graph").start(SESSION);
    tokio::time::sleep(Duration::from_millis(50)).await;
    session.cancel();
    let started = Instant::now();
    session.wait().await.expect("cancellation is not an error");
    assert!(started.elapsed() < Duration::from_millis(100), "blocking thread noticed cancellation at its next frame");
}

#[tokio::test]
async fn fan_out_and_fan_in_deliver_everything() {
    let format = PortFormat::Audio(format16k());
    let mut graph = on_device();
    let source = graph.add(ToneSource::new(name("tone"), format16k(), Duration::from_millis(20), 100));
    let left = graph.add(PassThrough::new(name("left"), format));
    let right = graph.add(PassThrough::new(name("right"), format));
    let (sink, count) = CountingSink::new(name("sink"));
    let sink = graph.add(sink);
    graph
        .connect(source, left, EdgeConfig::lossless(4))
        .connect(source, right, EdgeConfig::lossless(4))
        .connect(left, sink, EdgeConfig::lossless(4))
        .connect(right, sink, EdgeConfig::lossless(4));
    let report = graph.build().expect("valid graph").start(SESSION).wait().await.expect("clean end");
    // Both branches deliver 100 frames; end of stream is consumed per input,
    // and the counting sink sees none of them.
    assert_eq!(count.load(Ordering::Relaxed), 200);
    assert_eq!(report.edges.len(), 4);
    assert_eq!(report.total_drops(), 0);
}

#[tokio::test]
async fn interrupted_turn_frames_dropped_downstream() {
    use mentis_pipeline::{DropReason, TurnId};
    let format = PortFormat::Any;
    let mut graph = on_device();
    let (input, source) = ChannelSource::new(name("input"), format, EdgeConfig::lossless(64));
    let pass = PassThrough::new(name("tts"), format);
    let (sink, mut output) = ChannelSink::new(name("speaker"), format, EdgeConfig::lossless(64));
    graph.chain(vec![Box::new(source), Box::new(pass), Box::new(sink)], EdgeConfig::lossless(64));
    let session = graph.build().expect("valid graph").start(SESSION);

    input.send(common::audio(0, TurnId(1))).await.expect("running");
    input.send(common::control(TurnId(1), Control::Interrupt)).await.expect("running");
    // A late frame of the interrupted turn, then the new turn.
    input.send(common::audio(1, TurnId(1))).await.expect("running");
    input.send(common::audio(2, TurnId(2))).await.expect("running");
    drop(input);
    let report = session.wait().await.expect("clean end");

    let mut audio_turns = Vec::new();
    while let Some(frame) = output.recv().await {
        if frame.as_audio().is_some() {
            audio_turns.push(frame.meta.turn.0);
        }
    }
    assert!(!audio_turns.contains(&1) || audio_turns == vec![1, 2], "late turn-1 audio never follows the interrupt: {audio_turns:?}");
    assert_eq!(audio_turns.last(), Some(&2));
    let stale: u64 = report.edges.iter().flat_map(|edge| &edge.drops).filter(|(reason, _)| matches!(reason, DropReason::StaleTurn | DropReason::Interrupted)).map(|(_, count)| count).sum();
    assert!(stale >= 1, "the late frame was counted: {report:?}");
}

#[tokio::test]
async fn report_serializes_to_json_and_prometheus() {
    let mut graph = on_device();
    let source = graph.add(ToneSource::new(name("tone"), format16k(), Duration::from_millis(20), 20));
    let (sink, _count) = CountingSink::new(name("sink"));
    let sink = graph.add(sink);
    graph.connect(source, sink, EdgeConfig::lossless(4));
    let session = graph.build().expect("valid graph").start(SESSION);
    let turns = session.turns().clone();
    turns.mark(mentis_pipeline::TurnId(1), mentis_pipeline::TurnMark::EndOfSpeech);
    turns.mark(mentis_pipeline::TurnId(1), mentis_pipeline::TurnMark::FirstAudioOut);
    let report = session.wait().await.expect("clean end");

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    assert_eq!(json["tier"], "on_device");
    assert_eq!(json["stages"][0]["stage"], "tone");
    assert_eq!(json["edges"][0]["edge"], "tone -> sink");
    assert_eq!(json["edges"][0]["delivered"], 21);
    assert!(json["turns"][0]["voice_to_voice_ms"].is_number());

    let text = report.to_prometheus();
    assert!(text.contains("mentis_stage_frames_total{session=\"7\",stage=\"tone\",direction=\"out\"} 21"), "{text}");
    assert!(text.contains("mentis_edge_dropped_frames_total{session=\"7\",edge=\"tone -> sink\",reason=\"oldest\"} 0"), "{text}");
    assert!(text.contains("# TYPE mentis_edge_queue_seconds summary"));
    assert!(text.contains("mentis_turn_latency_seconds{session=\"7\",turn=\"1\",mark=\"first_audio_out\"}"), "{text}");
}

/// Emits one text token every 5 ms for the turn of each transcript it gets,
/// checking for interrupts between tokens like an LLM stage.
struct Generator {
    name: mentis_pipeline::StageName,
    tokens_per_reply: u32,
    emitted: Arc<AtomicU64>,
}

impl Processor for Generator {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Text, PortFormat::Text).with_execution(Execution::Blocking)
    }

    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError> {
        let turn = frame.meta.turn;
        for index in 0..self.tokens_per_reply {
            if out.should_stop(turn) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
            let meta = out.next_meta(turn, mentis_pipeline::MediaTime::ZERO);
            out.emit(Frame::new(meta, mentis_pipeline::Payload::Text(mentis_pipeline::TextDelta { text: format!("t{index} "), last: false })));
            self.emitted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_generator_streams_and_stops_on_interrupt() {
    use mentis_pipeline::TurnId;
    let mut graph = on_device();
    let (input, source) = ChannelSource::new(name("input"), PortFormat::Text, EdgeConfig::lossless(8));
    let emitted = Arc::new(AtomicU64::new(0));
    let generator = processor(Generator { name: name("llm"), tokens_per_reply: 1_000, emitted: Arc::clone(&emitted) });
    let (sink, mut output) = ChannelSink::new(name("tts"), PortFormat::Text, EdgeConfig::lossless(2_000));
    graph.chain(vec![Box::new(source), generator, Box::new(sink)], EdgeConfig::lossless(2_000));
    let session = graph.build().expect("valid graph").start(SESSION);

    let mut prompt = common::text(0, "hello");
    prompt.meta.turn = TurnId(1);
    input.send(prompt).await.expect("running");

    // Tokens arrive while generation is still running.
    let first = tokio::time::timeout(Duration::from_secs(2), output.recv()).await.expect("a token streams out").expect("open");
    assert!(matches!(first.payload, mentis_pipeline::Payload::Text(_)));
    tokio::time::sleep(Duration::from_millis(50)).await;

    input.send(common::control(TurnId(1), Control::Interrupt)).await.expect("running");
    let at_interrupt = emitted.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = emitted.load(Ordering::Relaxed);
    assert!(after <= at_interrupt + 1, "generation stopped within one token: {at_interrupt} then {after}");
    assert!(after < 1_000);

    drop(input);
    session.wait().await.expect("clean end");
}

#[test]
fn drops_logged_once_per_reason() {
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let config = EdgeConfig::lossless(2).with_policy(mentis_pipeline::OverflowPolicy::DropOldest);
            let (sender, receiver) = mentis_pipeline::edge::channel("mic -> vad", config);
            for seq in 0..100 {
                sender.send(common::audio(seq, mentis_pipeline::TurnId::NONE)).await.expect("receiver alive");
            }
            assert_eq!(receiver.metrics().drops(mentis_pipeline::DropReason::Oldest), 98);
        });
    });
    let logs = String::from_utf8(captured.0.lock().expect("capture lock").clone()).expect("utf-8");
    let oldest: Vec<&str> = logs.lines().filter(|line| line.contains("reason=\"oldest\"")).collect();
    assert_eq!(oldest.len(), 1, "98 drops give one warning within the rate limit: {logs}");
    assert!(oldest[0].contains("dropped=1"), "the first drop is logged at once: {logs}");
    assert!(logs.contains("edge=mic -> vad"), "{logs}");
}
