//! Pipeline core latency, in microseconds per hop and per interrupt.
//!
//! - `hop_latency/N`: one 20 ms 16 kHz mono frame travels through a chain of
//!   N pass-through stages (N + 1 edges between the channel source and the
//!   channel sink); criterion's time is for the whole trip. After criterion's
//!   run, 20,000 single trips are timed again and the per-hop p50 and p99 are
//!   printed.
//! - `throughput/N`: 2,000 frames sent back to back through the same chain;
//!   criterion reports frames per second.
//! - `interrupt_latency`: 50 audio frames of turn 1 are queued at the input of
//!   source → pass-through → sink; the time from sending an interrupt for
//!   turn 1 until the sink receives it, with no turn-1 audio before it.
//!
//! Every run uses a single-threaded tokio runtime, as one session runs on one
//! core. Run with `cargo bench --bench pipeline`.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mentis::pipeline::basic::{ChannelSink, ChannelSource, PassThrough};
use mentis::pipeline::edge::{Receiver, Sender};
use mentis::pipeline::{
    AudioData, AudioFormat, Control, EdgeConfig, Frame, FrameMeta, GraphBuilder, LatencyHistogram, MediaTime,
    PortFormat, PrivacyPolicy, PrivacyTier, Session, SessionId, Stage, StageName, TurnId,
};
use tokio::runtime::Runtime;

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime")
}

fn frame(seq: u64, turn: TurnId) -> Frame {
    let audio = AudioData::from_i16(16_000, 1, vec![0_i16; 320]).expect("valid audio");
    let meta = FrameMeta { session: SessionId(1), turn, seq, timestamp: MediaTime::ZERO };
    Frame::audio(meta, audio)
}

/// Starts channel source → `stages` pass-throughs → channel sink.
fn chain(stages: usize, capacity: usize) -> (Sender, Session, Receiver) {
    let format = PortFormat::Audio(AudioFormat::mono_i16(16_000));
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let (input, source) = ChannelSource::new(name("input"), format, EdgeConfig::lossless(capacity));
    let (sink, output) = ChannelSink::new(name("output"), format, EdgeConfig::lossless(capacity));
    let mut chain: Vec<Box<dyn Stage>> = vec![Box::new(source)];
    for index in 0..stages {
        chain.push(Box::new(PassThrough::new(name(&format!("pass{index}")), format)));
    }
    chain.push(Box::new(sink));
    graph.chain(chain, EdgeConfig::lossless(capacity));
    let session = graph.build().expect("valid graph").start(SessionId(1));
    (input, session, output)
}

async fn one_trip(input: &Sender, output: &mut Receiver, seq: u64) -> Duration {
    let started = Instant::now();
    input.send(frame(seq, TurnId::NONE)).await.expect("pipeline running");
    output.recv().await.expect("frame arrives");
    started.elapsed()
}

fn hop_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("hop_latency");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    for stages in [1_usize, 5, 10] {
        let runtime = runtime();
        let (input, session, mut output) = runtime.block_on(async { chain(stages, 32) });
        group.bench_with_input(BenchmarkId::from_parameter(stages), &stages, |b, _| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for seq in 0..iterations {
                        total += one_trip(&input, &mut output, seq).await;
                    }
                    total
                })
            });
        });

        // Per-hop percentiles over single trips, which criterion does not report.
        let hops = stages as u32 + 1;
        let mut histogram = LatencyHistogram::new();
        runtime.block_on(async {
            for seq in 0..20_000 {
                histogram.record(one_trip(&input, &mut output, seq).await / hops);
            }
        });
        println!(
            "hop_latency/{stages}: per hop p50 {:.2} µs, p99 {:.2} µs over {} trips of {hops} hops",
            histogram.quantile(0.5).as_secs_f64() * 1e6,
            histogram.quantile(0.99).as_secs_f64() * 1e6,
            histogram.count()
        );
        drop(input);
        runtime.block_on(async { session.wait().await.expect("clean end") });
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("throughput");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    const FRAMES: u64 = 2_000;
    group.throughput(Throughput::Elements(FRAMES));
    for stages in [1_usize, 5, 10] {
        let runtime = runtime();
        let (input, session, mut output) = runtime.block_on(async { chain(stages, 32) });
        group.bench_with_input(BenchmarkId::from_parameter(stages), &stages, |b, _| {
            b.iter(|| {
                runtime.block_on(async {
                    let reader = async {
                        for _ in 0..FRAMES {
                            output.recv().await.expect("frame arrives");
                        }
                    };
                    let writer = async {
                        for seq in 0..FRAMES {
                            input.send(frame(seq, TurnId::NONE)).await.expect("pipeline running");
                        }
                    };
                    tokio::join!(reader, writer);
                });
            });
        });
        drop(input);
        runtime.block_on(async { session.wait().await.expect("clean end") });
    }
    group.finish();
}

fn interrupt_latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("interrupt_latency");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let runtime = runtime();
    let (input, session, mut output) = runtime.block_on(async { chain(1, 64) });
    let mut turn = 0_u64;
    group.bench_function("50_frames_queued", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    turn += 1;
                    // Fill the source's input edge; on this one thread nothing
                    // moves until the interrupt's await yields.
                    for seq in 0..50 {
                        input.send(frame(seq, TurnId(turn))).await.expect("pipeline running");
                    }
                    let interrupt = Frame::control(
                        FrameMeta { session: SessionId(1), turn: TurnId(turn), seq: 0, timestamp: MediaTime::ZERO },
                        Control::Interrupt,
                    );
                    let started = Instant::now();
                    input.send(interrupt).await.expect("pipeline running");
                    let first = output.recv().await.expect("interrupt arrives");
                    total += started.elapsed();
                    assert_eq!(first.as_control(), Some(&Control::Interrupt), "no interrupted audio reached the sink first");
                }
                total
            })
        });
    });
    group.finish();
    // The queued frames sit on the channel source's own input edge, whose
    // counters the sender carries.
    let discarded = input.metrics().drops(mentis::pipeline::DropReason::Interrupted);
    println!("interrupt_latency: {discarded} queued frames discarded over {turn} interrupts");
    assert_eq!(discarded, 50 * turn, "every queued frame of an interrupted turn is discarded");
    drop(input);
    runtime.block_on(async { session.wait().await.expect("clean end") });
}

criterion_group!(benches, hop_latency, throughput, interrupt_latency);
criterion_main!(benches);
