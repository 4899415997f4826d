//! Real-time sessions one core keeps on time.
//!
//! Each session is source → 3 pass-throughs → sink. A single-threaded tokio
//! runtime (one core) drives N sessions: every 20 ms a ticker sends one
//! 20 ms 16 kHz frame into each session, stamped with the tick's scheduled
//! time, and each sink records how late the frame arrives relative to that
//! time. A count of sessions is on time when, over 5 s of audio, no frame is
//! more than 20 ms late. The count goes up in steps until a step fails; the
//! largest on-time count is printed. Criterion then times one tick of the
//! largest count tried, in milliseconds per 20 ms tick.
//!
//! Run with `cargo bench --bench sessions_per_core`.

use std::sync::{Arc, OnceLock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mentis::pipeline::basic::{ChannelSource, PassThrough};
use mentis::pipeline::edge::Sender;
use mentis::pipeline::{
    AudioData, AudioFormat, EdgeConfig, Frame, FrameMeta, GraphBuilder, MediaTime, PortFormat, PrivacyPolicy,
    PrivacyTier, Session, SessionId, Stage, StageFuture, StageIo, StageName, StageSpec, TurnId,
};
use tokio::time::Instant;

fn name(text: &str) -> StageName {
    StageName::new(text).expect("valid stage name")
}

/// Records the largest lateness, in microseconds, of frames whose timestamp
/// is their scheduled send time measured from `epoch`. The epoch is set once
/// every session is built, so building them is not counted as lateness.
struct LatenessSink {
    name: StageName,
    epoch: Arc<OnceLock<Instant>>,
    worst_micros: Arc<AtomicU64>,
}

impl Stage for LatenessSink {
    fn spec(&self) -> StageSpec {
        StageSpec::new(self.name.clone(), PortFormat::Any, PortFormat::None)
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            while let Some(frame) = io.inbox.recv().await {
                let Some(&epoch) = self.epoch.get() else {
                    continue;
                };
                let due = epoch + frame.meta.timestamp.as_duration();
                let late = Instant::now().saturating_duration_since(due).as_micros() as u64;
                self.worst_micros.fetch_max(late, Ordering::Relaxed);
            }
            Ok(())
        })
    }
}

fn session(id: u64, epoch: &Arc<OnceLock<Instant>>, worst: &Arc<AtomicU64>) -> (Sender, Session) {
    let format = PortFormat::Audio(AudioFormat::mono_i16(16_000));
    let mut graph = GraphBuilder::new(PrivacyPolicy::new(PrivacyTier::OnDevice));
    let (input, source) = ChannelSource::new(name("input"), format, EdgeConfig::default());
    let mut stages: Vec<Box<dyn Stage>> = vec![Box::new(source)];
    for index in 0..3 {
        stages.push(Box::new(PassThrough::new(name(&format!("pass{index}")), format)));
    }
    stages.push(Box::new(LatenessSink { name: name("sink"), epoch: Arc::clone(epoch), worst_micros: Arc::clone(worst) }));
    graph.chain(stages, EdgeConfig::default());
    (input, graph.build().expect("valid graph").start(SessionId(id)))
}

/// Runs `count` sessions for `ticks` ticks; returns the worst lateness and
/// the mean time the ticker spent sending per tick.
fn run(count: u64, ticks: u64) -> (Duration, Duration) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
    runtime.block_on(async {
        let shared_epoch = Arc::new(OnceLock::new());
        let worst = Arc::new(AtomicU64::new(0));
        let sessions: Vec<_> = (0..count).map(|id| session(id, &shared_epoch, &worst)).collect();
        // Let every task reach its first wait before the clock starts.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let epoch = Instant::now();
        let _ = shared_epoch.set(epoch);
        let audio = AudioData::from_i16(16_000, 1, vec![0_i16; 320]).expect("valid audio");
        let mut sending = Duration::ZERO;

        for tick in 0..ticks {
            let scheduled = Duration::from_millis(20 * (tick + 1));
            tokio::time::sleep_until(epoch + scheduled).await;
            let started = Instant::now();
            for (index, (input, _)) in sessions.iter().enumerate() {
                let meta = FrameMeta {
                    session: SessionId(index as u64),
                    turn: TurnId::NONE,
                    seq: tick,
                    timestamp: MediaTime::from_duration(scheduled),
                };
                input.send(Frame::audio(meta, audio.clone())).await.expect("session running");
            }
            sending += started.elapsed();
        }

        for (input, session) in sessions {
            drop(input);
            session.wait().await.expect("clean end");
        }
        (Duration::from_micros(worst.load(Ordering::Relaxed)), sending / ticks as u32)
    })
}

fn sessions_per_core(c: &mut Criterion) {
    const TICKS: u64 = 250;
    let mut best = 0;
    let mut tried = 500;
    for count in [500_u64, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 8_000] {
        tried = count;
        let (worst, sending) = run(count, TICKS);
        let on_time = worst <= Duration::from_millis(20);
        println!(
            "sessions_per_core: {count} sessions, worst lateness {:.2} ms, ticker {:.2} ms per tick, {}",
            worst.as_secs_f64() * 1e3,
            sending.as_secs_f64() * 1e3,
            if on_time { "on time" } else { "late" }
        );
        if !on_time {
            break;
        }
        best = count;
    }
    println!("sessions_per_core: {best} sessions kept on time on one core");

    let mut group = c.benchmark_group("sessions_per_core");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(1));
    group.bench_function(format!("{tried}_sessions_50_ticks"), |b| b.iter(|| run(tried, 50)));
    group.finish();
}

criterion_group!(benches, sessions_per_core);
criterion_main!(benches);
