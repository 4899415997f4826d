//! Memory per idle session, in bytes, and the time to start and stop one.
//!
//! A counting global allocator tracks live heap bytes. 1,000 sessions of a
//! 6-stage pipeline (channel source → 4 pass-throughs → channel sink, every
//! edge with the default capacity) are started on a single-threaded runtime
//! and left idle with every stage task waiting for input; the live heap
//! growth divided by 1,000 is the memory per idle session, printed once.
//! Criterion then times starting and shutting down one such session.
//!
//! Run with `cargo bench --bench session_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mentis::pipeline::basic::{ChannelSink, ChannelSource, PassThrough};
use mentis::pipeline::edge::{Receiver, Sender};
use mentis::pipeline::{AudioFormat, EdgeConfig, GraphBuilder, PortFormat, PrivacyPolicy, PrivacyTier, Session, SessionId, Stage, StageName};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

fn six_stage_session(id: u64) -> (Sender, Session, Receiver) {
    let format = PortFormat::Audio(AudioFormat::mono_i16(16_000));
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let (input, source) = ChannelSource::new(name("input"), format, EdgeConfig::default());
    let (sink, output) = ChannelSink::new(name("output"), format, EdgeConfig::default());
    let mut stages: Vec<Box<dyn Stage>> = vec![Box::new(source)];
    for index in 0..4 {
        stages.push(Box::new(PassThrough::new(name(&format!("pass{index}")), format)));
    }
    stages.push(Box::new(sink));
    graph.chain(stages, EdgeConfig::default());
    (input, graph.build().expect("valid graph").start(SessionId(id)), output)
}

fn idle_session_memory() {
    const SESSIONS: u64 = 1_000;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
    runtime.block_on(async {
        // Warm up lazily allocated runtime structures before measuring.
        let warm = six_stage_session(0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(warm);

        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let sessions: Vec<_> = (1..=SESSIONS).map(six_stage_session).collect();
        // Let every stage task run to its first wait for input.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = LIVE_BYTES.load(Ordering::Relaxed);
        let per_session = (after - before) as f64 / SESSIONS as f64;
        println!(
            "session_memory: {per_session:.0} bytes ({:.1} KiB) per idle 6-stage session, over {SESSIONS} sessions",
            per_session / 1024.0
        );
        for (input, session, _output) in sessions {
            drop(input);
            session.wait().await.expect("clean end");
        }
    });
}

fn start_and_stop(c: &mut Criterion) {
    idle_session_memory();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
    let mut group = c.benchmark_group("session");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    let mut id = 0;
    group.bench_function("start_and_stop_6_stages", |b| {
        b.iter(|| {
            id += 1;
            runtime.block_on(async {
                let (input, session, _output) = six_stage_session(id);
                drop(input);
                session.wait().await.expect("clean end");
            });
        });
    });
    group.finish();
}

criterion_group!(benches, start_and_stop);
criterion_main!(benches);
