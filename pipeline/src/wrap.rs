//! Wrappers that add behaviour around any stage: a processing timeout and
//! retries with exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;

use crate::error::StageError;
use crate::frame::Frame;
use crate::stage::{InboxObserver, OutboxObserver, Stage, StageFuture, StageIo, StageSpec};

/// Fails a stage that spends longer than a limit on one frame: the time from
/// handing the stage a frame until it asks for the next one.
///
/// The error is retryable, so a [`Retry`] outside the timeout restarts the
/// stage. A stage running on a blocking thread is abandoned at the timeout and
/// stops at its next receive, because a thread cannot be interrupted.
pub struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<S> std::fmt::Debug for Timeout<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeout").field("limit", &self.limit).finish_non_exhaustive()
    }
}

impl<S: Stage> Timeout<S> {
    /// Wraps `inner` with a per-frame processing limit.
    pub fn new(inner: S, limit: Duration) -> Self {
        Timeout { inner, limit }
    }
}

#[derive(Default)]
struct BusyWatch {
    busy_since: Mutex<Option<(Instant, &'static str)>>,
}

impl InboxObserver for BusyWatch {
    fn frame_taken(&self, frame: &Frame) {
        *self.busy_since.lock() = Some((Instant::now(), frame.kind_name()));
    }

    fn frame_done(&self) {
        *self.busy_since.lock() = None;
    }
}

impl<S: Stage> Stage for Timeout<S> {
    fn spec(&self) -> StageSpec {
        self.inner.spec()
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let watch = Arc::new(BusyWatch::default());
            io.inbox.observers.push(Arc::clone(&watch) as Arc<dyn InboxObserver>);
            let name = io.name.clone();
            let limit = self.limit;

            let result = {
                let run = self.inner.run(io);
                let watchdog = async {
                    let period = (limit / 4).max(Duration::from_millis(1));
                    loop {
                        tokio::time::sleep(period).await;
                        let busy = *watch.busy_since.lock();
                        if let Some((since, kind)) = busy {
                            if since.elapsed() > limit {
                                return StageError::retryable(format!(
                                    "stage {name} spent more than {limit:?} on one {kind} frame"
                                ));
                            }
                        }
                    }
                };
                tokio::select! {
                    result = run => result,
                    error = watchdog => Err(error),
                }
            };

            io.inbox.observers.retain(|observer| !Arc::ptr_eq(observer, &(Arc::clone(&watch) as Arc<dyn InboxObserver>)));
            result
        })
    }
}

/// The spacing and limits of a [`Retry`]'s attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub max_retries: u32,
    /// The wait before the first retry.
    pub initial_backoff: Duration,
    /// The maximum wait between attempts.
    pub max_backoff: Duration,
    /// Frames received since the stage last emitted output that can be kept
    /// for replay. A failure with more frames outstanding than this is not
    /// retried, because they could not all be replayed.
    pub max_replay: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_replay: 256,
        }
    }
}

impl RetryPolicy {
    /// Returns the wait before retry number `attempt` (1 for the first), with
    /// full jitter: a uniform draw between half the exponential step and the step.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let step = self.initial_backoff.saturating_mul(1_u32 << exponent).min(self.max_backoff);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// Restarts a failed stage with a new instance when its error is retryable.
///
/// Frames the failed instance received after its last output are replayed
/// to the new one, so a retry happens only while none of the output for
/// those frames has been used downstream. Errors of other classes, failures
/// beyond [`RetryPolicy::max_retries`], and failures with more outstanding
/// frames than [`RetryPolicy::max_replay`] end the stage.
pub struct Retry<F> {
    factory: F,
    spec: StageSpec,
    policy: RetryPolicy,
}

impl<F> std::fmt::Debug for Retry<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry").field("stage", &self.spec.name).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl<F> Retry<F>
where
    F: FnMut() -> Result<Box<dyn Stage>, StageError> + Send + 'static,
{
    /// Wraps the stages that `factory` builds. The factory is called once now
    /// to read the spec, and again for each attempt.
    pub fn new(mut factory: F, policy: RetryPolicy) -> Result<Self, StageError> {
        let spec = factory()?.spec();
        Ok(Retry { factory, spec, policy })
    }
}

#[derive(Default)]
struct ReplayLog {
    frames: Mutex<Vec<Frame>>,
}

struct ReplayRecorder {
    log: Arc<ReplayLog>,
    limit: usize,
}

impl InboxObserver for ReplayRecorder {
    fn frame_taken(&self, frame: &Frame) {
        let mut frames = self.log.frames.lock();
        // One past the limit marks the log as too long to replay.
        if frames.len() <= self.limit {
            frames.push(frame.clone());
        }
    }

    fn frame_done(&self) {}
}

impl OutboxObserver for ReplayRecorder {
    fn frame_emitted(&self) {
        self.log.frames.lock().clear();
    }
}

impl<F> Stage for Retry<F>
where
    F: FnMut() -> Result<Box<dyn Stage>, StageError> + Send + 'static,
{
    fn spec(&self) -> StageSpec {
        self.spec.clone()
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let log = Arc::new(ReplayLog::default());
            let recorder = Arc::new(ReplayRecorder { log: Arc::clone(&log), limit: self.policy.max_replay });
            io.inbox.observers.push(Arc::clone(&recorder) as Arc<dyn InboxObserver>);
            io.outbox.observers.push(Arc::clone(&recorder) as Arc<dyn OutboxObserver>);
            let mut jitter_state = seed();

            let mut attempt = 0_u32;
            let result = loop {
                let mut stage = match (self.factory)() {
                    Ok(stage) => stage,
                    Err(error) => break Err(error),
                };
                let error = match stage.run(io).await {
                    Ok(()) => break Ok(()),
                    Err(error) => error,
                };

                let outstanding = std::mem::take(&mut *log.frames.lock());
                let replayable = outstanding.len() <= self.policy.max_replay;
                if !error.is_retryable() || attempt >= self.policy.max_retries || !replayable || io.is_cancelled() {
                    break Err(error);
                }
                attempt += 1;
                jitter_state = xorshift(jitter_state);
                let jitter = (jitter_state >> 11) as f64 / (1_u64 << 53) as f64;
                let wait = error.retry_after().unwrap_or_else(|| self.policy.backoff(attempt, jitter));
                tracing::warn!(
                    stage = %io.name,
                    attempt,
                    max_retries = self.policy.max_retries,
                    replayed_frames = outstanding.len(),
                    wait_ms = wait.as_millis() as u64,
                    error = %error,
                    "stage failed; retrying"
                );
                io.inbox.push_front_replay(outstanding);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = io.inbox.cancel_token().cancelled() => break Err(error),
                }
            };

            let inbox_observer = Arc::clone(&recorder) as Arc<dyn InboxObserver>;
            io.inbox.observers.retain(|observer| !Arc::ptr_eq(observer, &inbox_observer));
            let outbox_observer = Arc::clone(&recorder) as Arc<dyn OutboxObserver>;
            io.outbox.observers.retain(|observer| !Arc::ptr_eq(observer, &outbox_observer));
            result
        })
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |elapsed| elapsed.as_nanos() as u64);
    nanos | 1
}

fn xorshift(mut state: u64) -> u64 {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    state
}
