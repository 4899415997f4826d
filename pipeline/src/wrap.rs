//! Wrappers that add behaviour around any stage: a processing timeout,
//! retries with exponential backoff, and fallback to backup backends.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use parking_lot::Mutex;

use crate::error::StageError;
use crate::frame::Frame;
use crate::privacy::{Egress, PrivacyPolicy, PrivacyTier};
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
            let policy = self.policy;
            let factory = &mut self.factory;
            let mut jitter_state = seed();
            run_with_replay(io, policy.max_replay, |attempt, error| {
                if let Some(error) = error {
                    if !error.is_retryable() || attempt > policy.max_retries {
                        return Next::GiveUp;
                    }
                    jitter_state = xorshift(jitter_state);
                    let jitter = (jitter_state >> 11) as f64 / (1_u64 << 53) as f64;
                    let wait = error.retry_after().unwrap_or_else(|| policy.backoff(attempt, jitter));
                    return match factory() {
                        Ok(stage) => Next::After(wait, stage, "retrying"),
                        Err(error) => Next::Fail(error),
                    };
                }
                match factory() {
                    Ok(stage) => Next::After(Duration::ZERO, stage, "starting"),
                    Err(error) => Next::Fail(error),
                }
            })
            .await
        })
    }
}

/// What [`run_with_replay`] does after an attempt.
enum Next {
    /// Runs this stage after the wait. The text is the reason, for the log.
    After(Duration, Box<dyn Stage>, &'static str),
    /// Returns the last error.
    GiveUp,
    /// Returns this error (the next stage could not be made).
    Fail(StageError),
}

/// Runs stages one after another on the same I/O until one ends cleanly:
/// `next(attempt, last_error)` picks each (attempt 0 has no error). Frames
/// the failed stage received after its last output are replayed to the next
/// one. A failure with more of them than `max_replay` is not retried.
async fn run_with_replay(
    io: &mut StageIo,
    max_replay: usize,
    mut next: impl FnMut(u32, Option<&StageError>) -> Next,
) -> Result<(), StageError> {
    let log = Arc::new(ReplayLog::default());
    let recorder = Arc::new(ReplayRecorder { log: Arc::clone(&log), limit: max_replay });
    io.inbox.observers.push(Arc::clone(&recorder) as Arc<dyn InboxObserver>);
    io.outbox.observers.push(Arc::clone(&recorder) as Arc<dyn OutboxObserver>);

    let mut attempt = 0_u32;
    let mut last_error: Option<StageError> = None;
    let result = loop {
        let mut stage = match next(attempt, last_error.as_ref()) {
            Next::After(wait, stage, why) => {
                if let Some(error) = &last_error {
                    let outstanding = std::mem::take(&mut *log.frames.lock());
                    if outstanding.len() > max_replay || io.is_cancelled() {
                        break Err(last_error.take().unwrap_or_else(|| StageError::fatal("no error recorded")));
                    }
                    tracing::warn!(
                        stage = %io.name,
                        attempt,
                        replayed_frames = outstanding.len(),
                        wait_ms = wait.as_millis() as u64,
                        error = %error,
                        "stage failed; {why}"
                    );
                    io.inbox.push_front_replay(outstanding);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = io.inbox.cancel_token().cancelled() => {
                            break Err(last_error.take().unwrap_or_else(|| StageError::fatal("no error recorded")));
                        }
                    }
                }
                stage
            }
            Next::GiveUp => break Err(last_error.take().unwrap_or_else(|| StageError::fatal("no error recorded"))),
            Next::Fail(error) => break Err(error),
        };
        attempt += 1;
        match stage.run(io).await {
            Ok(()) => break Ok(()),
            Err(error) => last_error = Some(error),
        }
    };

    let inbox_observer = Arc::clone(&recorder) as Arc<dyn InboxObserver>;
    io.inbox.observers.retain(|observer| !Arc::ptr_eq(observer, &inbox_observer));
    let outbox_observer = Arc::clone(&recorder) as Arc<dyn OutboxObserver>;
    io.outbox.observers.retain(|observer| !Arc::ptr_eq(observer, &outbox_observer));
    result
}

/// Frames a [`Fallback`] keeps for replay: 60 s of 20 ms audio frames. A
/// backend that fails with more frames unanswered than this is not replaced,
/// because the backup could not be given all of them.
pub const FALLBACK_MAX_REPLAY: usize = 3000;

/// A stage with backups of the same kind: when the running backend fails
/// with a retryable error (after its own retries), the next one takes over,
/// and the frames that got no output yet are replayed to it. A backend that
/// failed is not used again in the session.
///
/// [`Fallback::new`] accepts only backups at least as private as the
/// primary: a self-hosted backend may fall back to another self-hosted or an
/// on-device one, never to a cloud one. The graph's tier check covers every
/// backend, because the spec's egress lists all their endpoints.
pub struct Fallback {
    backends: std::collections::VecDeque<Box<dyn Stage>>,
    spec: StageSpec,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback").field("stage", &self.spec.name).field("backends", &self.backends.len()).finish()
    }
}

/// Backends that cannot back each other up.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    /// No backend was given.
    #[error("a fallback stage needs at least one backend")]
    Empty,
    /// A backup takes or gives another format than the primary.
    #[error("backup {index} ({backup}) takes {backup_input} and gives {backup_output}, but the primary takes {input} and gives {output}; every backend must have the primary's formats")]
    Formats {
        /// The backup's position, 1 for the first backup.
        index: usize,
        /// The backup's stage name.
        backup: String,
        /// The primary's input format.
        input: String,
        /// The primary's output format.
        output: String,
        /// The backup's input format.
        backup_input: String,
        /// The backup's output format.
        backup_output: String,
    },
    /// A backup is less private than the primary.
    #[error("backup {index} ({backup}) is a {backup_tier} backend but the primary is {primary_tier}; a fallback never goes to a less private tier, so use a backup of the primary's tier or a more private one")]
    LessPrivate {
        /// The backup's position, 1 for the first backup.
        index: usize,
        /// The backup's stage name.
        backup: String,
        /// The primary's tier.
        primary_tier: PrivacyTier,
        /// The backup's tier.
        backup_tier: PrivacyTier,
    },
    /// An endpoint could not be checked.
    #[error(transparent)]
    Privacy(#[from] crate::privacy::PrivacyError),
}

impl Fallback {
    /// Wraps `backends`, the primary first. The stage keeps the primary's
    /// name, and `policy` decides how private each backend's endpoints are.
    pub fn new(backends: Vec<Box<dyn Stage>>, policy: &PrivacyPolicy) -> Result<Self, FallbackError> {
        let specs: Vec<StageSpec> = backends.iter().map(|stage| stage.spec()).collect();
        let Some(primary) = specs.first() else {
            return Err(FallbackError::Empty);
        };
        let primary_tier = egress_tier(primary, policy)?;
        let mut urls = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            if spec.input != primary.input || spec.output != primary.output {
                return Err(FallbackError::Formats {
                    index,
                    backup: spec.name.to_string(),
                    input: format!("{:?}", primary.input),
                    output: format!("{:?}", primary.output),
                    backup_input: format!("{:?}", spec.input),
                    backup_output: format!("{:?}", spec.output),
                });
            }
            let tier = egress_tier(spec, policy)?;
            if tier > primary_tier {
                return Err(FallbackError::LessPrivate {
                    index,
                    backup: spec.name.to_string(),
                    primary_tier,
                    backup_tier: tier,
                });
            }
            match &spec.egress {
                Egress::None => {}
                Egress::Endpoint(url) => urls.push(url.clone()),
                Egress::Endpoints(more) => urls.extend(more.iter().cloned()),
            }
        }
        let egress = if urls.is_empty() { Egress::None } else { Egress::Endpoints(urls) };
        let spec = primary.clone().with_egress(egress);
        Ok(Fallback { backends: backends.into(), spec })
    }
}

/// Returns the least private tier any endpoint of `spec` needs.
fn egress_tier(spec: &StageSpec, policy: &PrivacyPolicy) -> Result<PrivacyTier, FallbackError> {
    let urls: Vec<&url::Url> = match &spec.egress {
        Egress::None => return Ok(PrivacyTier::OnDevice),
        Egress::Endpoint(url) => vec![url],
        Egress::Endpoints(urls) => urls.iter().collect(),
    };
    let mut tier = PrivacyTier::OnDevice;
    for url in urls {
        tier = tier.max(policy.endpoint_tier(&spec.name, url)?);
    }
    Ok(tier)
}

impl Stage for Fallback {
    fn spec(&self) -> StageSpec {
        self.spec.clone()
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let backends = &mut self.backends;
            run_with_replay(io, FALLBACK_MAX_REPLAY, |attempt, error| {
                if error.is_some_and(|error| !error.is_retryable()) {
                    return Next::GiveUp;
                }
                match backends.pop_front() {
                    Some(stage) if attempt == 0 => Next::After(Duration::ZERO, stage, "starting"),
                    Some(stage) => Next::After(Duration::ZERO, stage, "falling back to the next backend"),
                    None => Next::GiveUp,
                }
            })
            .await
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
