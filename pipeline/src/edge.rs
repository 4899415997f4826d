//! Bounded edges between stages.
//!
//! An edge is a bounded queue with two lanes. The data lane carries audio, text
//! and in-order control events, up to a capacity in frames and, for audio, in
//! media time; what happens when it is full is the edge's [`OverflowPolicy`].
//! The priority lane holds interrupts, flushes and errors, and the receiver
//! always empties it first, so an interrupt overtakes everything queued.
//!
//! Every frame an edge discards is counted by [`DropReason`] and logged at
//! `warn`, once per reason and then at most every [`DROP_LOG_INTERVAL`].

use std::collections::VecDeque;
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::frame::{Control, Frame};
use crate::histogram::LatencyHistogram;
use crate::id::TurnId;

/// The behaviour of a full edge towards the next data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// The sender waits for room: lossless backpressure, for text and transcripts.
    Block,
    /// The oldest queued frame is discarded: real-time audio, where stale audio
    /// is worth less than fresh audio.
    DropOldest,
    /// The new frame is discarded.
    DropNewest,
}

/// The reason an edge discarded a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// `DropOldest` made room for a newer frame.
    Oldest,
    /// `DropNewest` discarded the new frame.
    Newest,
    /// An interrupt discarded queued frames of the turn it cancels.
    Interrupted,
    /// A frame arrived after an interrupt cancelled its turn.
    StaleTurn,
    /// The receiver was gone when the frame was sent or was still queued.
    ReceiverClosed,
}

impl DropReason {
    /// Every reason, in the order of [`EdgeReport::drops`].
    pub const ALL: [DropReason; 5] = [
        DropReason::Oldest,
        DropReason::Newest,
        DropReason::Interrupted,
        DropReason::StaleTurn,
        DropReason::ReceiverClosed,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Returns the reason's snake-case name, as in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Oldest => "oldest",
            DropReason::Newest => "newest",
            DropReason::Interrupted => "interrupted",
            DropReason::StaleTurn => "stale_turn",
            DropReason::ReceiverClosed => "receiver_closed",
        }
    }
}

/// The minimum time between two drop warnings of the same edge and reason.
/// The first drop of each reason is always logged; later ones are summed.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Default data capacity in frames: 32 frames of 20 ms audio is 640 ms.
pub const DEFAULT_CAPACITY: usize = 32;

/// Default priority lane capacity. Control events are rare; a sender of one
/// more waits for room instead of losing it.
pub const DEFAULT_CONTROL_CAPACITY: usize = 16;

/// The queueing settings of an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeConfig {
    /// Most data frames queued at once. At least 1.
    pub capacity: usize,
    /// Most audio queued at once, counted by playing time, or `None` for a
    /// limit in frames only. A single frame longer than this is still accepted
    /// when the queue is empty.
    pub max_audio: Option<Duration>,
    /// The behaviour of a full data lane towards the next frame.
    pub policy: OverflowPolicy,
    /// Most priority events queued at once. At least 1; senders wait when full.
    pub control_capacity: usize,
}

impl EdgeConfig {
    /// Creates a lossless edge configuration of `capacity` frames: senders wait when it is full.
    pub const fn lossless(capacity: usize) -> Self {
        EdgeConfig {
            capacity,
            max_audio: None,
            policy: OverflowPolicy::Block,
            control_capacity: DEFAULT_CONTROL_CAPACITY,
        }
    }

    /// Creates a real-time audio edge configuration that keeps at most
    /// `max_audio` of audio and discards the oldest frame when more arrives.
    pub fn realtime_audio(max_audio: Duration) -> Self {
        EdgeConfig {
            capacity: DEFAULT_CAPACITY.max(1),
            max_audio: Some(max_audio),
            policy: OverflowPolicy::DropOldest,
            control_capacity: DEFAULT_CONTROL_CAPACITY,
        }
    }

    /// Returns the configuration with another policy.
    #[must_use]
    pub const fn with_policy(mut self, policy: OverflowPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Returns the configuration with a limit in media time.
    #[must_use]
    pub const fn with_max_audio(mut self, max_audio: Duration) -> Self {
        self.max_audio = Some(max_audio);
        self
    }

    /// Returns whether the capacities are usable, naming the field that is not.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.capacity == 0 {
            return Err("capacity must be at least 1 frame");
        }
        if self.control_capacity == 0 {
            return Err("control_capacity must be at least 1 event");
        }
        if self.max_audio == Some(Duration::ZERO) {
            return Err("max_audio must be above zero");
        }
        Ok(())
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig::lossless(DEFAULT_CAPACITY)
    }
}

/// The receiver of an edge has been dropped; the frame comes back unsent.
#[derive(Debug, thiserror::Error)]
#[error("the receiving stage has stopped")]
pub struct Closed(pub Frame);

/// The outcome of a frame handed to [`Sender::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The frame is queued.
    Queued,
    /// The frame is queued and older frames were discarded to make room.
    QueuedAfterDrop,
    /// The edge was full and discarded the frame (`DropNewest`).
    Dropped,
}

/// Live counters of one edge, shared by its sender, receiver and reports.
#[derive(Debug)]
pub struct EdgeMetrics {
    label: String,
    sent: AtomicU64,
    delivered: AtomicU64,
    blocked_sends: AtomicU64,
    blocked_nanos: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    drop_log: Mutex<[DropLogState; DropReason::ALL.len()]>,
}

#[derive(Debug, Default, Clone, Copy)]
struct DropLogState {
    last_warn: Option<Instant>,
    unreported: u64,
}

impl EdgeMetrics {
    fn new(label: String) -> Self {
        EdgeMetrics {
            label,
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            blocked_sends: AtomicU64::new(0),
            blocked_nanos: AtomicU64::new(0),
            drops: Default::default(),
            drop_log: Mutex::new([DropLogState::default(); DropReason::ALL.len()]),
        }
    }

    /// Counts `count` dropped frames and logs them within the rate limit.
    pub fn record_drop(&self, reason: DropReason, count: u64) {
        if count == 0 {
            return;
        }
        self.drops[reason.index()].fetch_add(count, Ordering::Relaxed);

        let now = Instant::now();
        let mut log = self.drop_log.lock();
        let state = &mut log[reason.index()];
        state.unreported += count;
        let due = state.last_warn.is_none_or(|last| now.duration_since(last) >= DROP_LOG_INTERVAL);
        if due {
            let total = self.drops[reason.index()].load(Ordering::Relaxed);
            tracing::warn!(
                edge = %self.label,
                reason = reason.as_str(),
                dropped = state.unreported,
                total,
                "edge dropped frames"
            );
            state.last_warn = Some(now);
            state.unreported = 0;
        }
    }

    /// Returns the number of frames dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// Returns the number of frames accepted by the sender, dropped or not.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Returns the number of frames handed to the receiver.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Returns the edge's label, `from -> to`.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// A snapshot of one edge's counters.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeReport {
    /// `from -> to`.
    pub edge: String,
    /// Frames handed to the sender.
    pub sent: u64,
    /// Frames handed to the receiver.
    pub delivered: u64,
    /// Data frames queued now.
    pub depth: usize,
    /// The maximum number of data frames ever queued at once.
    pub high_water: usize,
    /// Sends that had to wait for room.
    pub blocked_sends: u64,
    /// Total time senders waited for room, in microseconds.
    pub blocked_micros: u64,
    /// Time from send to receive, median, in microseconds.
    pub queue_p50_micros: f64,
    /// Time from send to receive, 99th percentile, in microseconds.
    pub queue_p99_micros: f64,
    /// Dropped frames by reason; reasons with no drops are left out.
    pub drops: Vec<(DropReason, u64)>,
    #[serde(skip)]
    pub(crate) queue_time: LatencyHistogram,
}

struct Queued {
    frame: Frame,
    enqueued: Instant,
}

struct State {
    ready: Arc<Notify>,
    data: VecDeque<Queued>,
    control: VecDeque<Queued>,
    queued_media: Duration,
    high_water: usize,
    senders: usize,
    receiver_alive: bool,
    waiting_senders: usize,
    queue_time: LatencyHistogram,
}

impl State {
    fn data_full(&self, config: &EdgeConfig) -> bool {
        if self.data.len() >= config.capacity {
            return true;
        }
        match config.max_audio {
            Some(limit) => !self.data.is_empty() && self.queued_media >= limit,
            None => false,
        }
    }

    fn push_data(&mut self, frame: Frame) {
        self.queued_media += frame.media_duration();
        self.data.push_back(Queued { frame, enqueued: Instant::now() });
        self.high_water = self.high_water.max(self.data.len());
    }

    fn pop_data(&mut self) -> Option<Queued> {
        let queued = self.data.pop_front()?;
        self.queued_media = self.queued_media.saturating_sub(queued.frame.media_duration());
        Some(queued)
    }

    /// Discards queued data frames of `turn` and earlier, returning how many.
    /// Frames of no turn ([`TurnId::NONE`]), such as audio before speech, stay.
    fn discard_through(&mut self, turn: TurnId) -> u64 {
        let before = self.data.len();
        self.data.retain(|queued| queued.frame.meta.turn > turn || queued.frame.meta.turn == TurnId::NONE);
        self.queued_media = self.data.iter().map(|queued| queued.frame.media_duration()).sum();
        (before - self.data.len()) as u64
    }
}

struct Shared {
    /// The queues. `State::ready` wakes the receiver; it is shared by every
    /// input edge of one stage, so one wake-up serves a stage that merges
    /// several edges.
    state: Mutex<State>,
    /// Wakes senders waiting for room.
    space: Notify,
    config: EdgeConfig,
    metrics: Arc<EdgeMetrics>,
    /// The highest turn an interrupt sent on this edge has cancelled, or 0.
    /// A processor busy inside one call reads it to stop early, before the
    /// interrupt itself reaches the front of its inbox.
    interrupted_through: Arc<AtomicU64>,
}

/// The sending half of an edge. Cloning adds a sender; the edge closes for the
/// receiver when every sender is gone and the queue is empty.
pub struct Sender {
    shared: Arc<Shared>,
}

/// The receiving half of an edge.
pub struct Receiver {
    shared: Arc<Shared>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").field("edge", &self.shared.metrics.label).finish()
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").field("edge", &self.shared.metrics.label).finish()
    }
}

/// Creates an edge labelled `label` (conventionally `from -> to`).
///
/// # Panics
/// If `config` fails [`EdgeConfig::validate`]; the graph builder validates
/// configurations before it creates edges.
pub fn channel(label: impl Into<String>, config: EdgeConfig) -> (Sender, Receiver) {
    channel_with_notify(label, config, Arc::new(Notify::new()))
}

pub(crate) fn channel_with_notify(
    label: impl Into<String>,
    config: EdgeConfig,
    ready: Arc<Notify>,
) -> (Sender, Receiver) {
    if let Err(problem) = config.validate() {
        panic!("invalid edge configuration: {problem}");
    }
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            ready,
            data: VecDeque::new(),
            control: VecDeque::new(),
            queued_media: Duration::ZERO,
            high_water: 0,
            senders: 1,
            receiver_alive: true,
            waiting_senders: 0,
            queue_time: LatencyHistogram::new(),
        }),
        space: Notify::new(),
        config,
        metrics: Arc::new(EdgeMetrics::new(label.into())),
        interrupted_through: Arc::new(AtomicU64::new(0)),
    });
    (Sender { shared: Arc::clone(&shared) }, Receiver { shared })
}

impl Sender {
    /// Sends a frame, waiting for room only when the edge is full and its
    /// policy is `Block` (or the priority lane is full).
    ///
    /// An interrupt also discards the queued data frames of the turn it
    /// cancels and of earlier turns, counted as [`DropReason::Interrupted`].
    pub async fn send(&self, frame: Frame) -> Result<Sent, Closed> {
        let shared = &*self.shared;
        let priority = frame.is_priority();
        let mut frame = Some(frame);
        let mut waiting_since: Option<Instant> = None;

        loop {
            // Register for a wake-up before looking at the queue, so that room
            // made between the check and the wait is not missed.
            let mut notified = pin!(shared.space.notified());
            notified.as_mut().enable();

            {
                let mut state = shared.state.lock();
                if waiting_since.is_some() {
                    state.waiting_senders -= 1;
                }
                let Some(current) = frame.take() else {
                    unreachable!("the frame is only taken when the loop returns");
                };
                if !state.receiver_alive {
                    drop(state);
                    shared.metrics.record_drop(DropReason::ReceiverClosed, 1);
                    return Err(Closed(current));
                }

                let outcome = if priority {
                    self.try_push_control(&mut state, current)
                } else {
                    self.try_push_data(&mut state, current)
                };
                match outcome {
                    Ok(sent) => {
                        if sent != Sent::Dropped {
                            state.ready.notify_one();
                        }
                        drop(state);
                        shared.metrics.sent.fetch_add(1, Ordering::Relaxed);
                        if let Some(since) = waiting_since {
                            shared.metrics.blocked_sends.fetch_add(1, Ordering::Relaxed);
                            let waited = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            shared.metrics.blocked_nanos.fetch_add(waited, Ordering::Relaxed);
                        }
                        return Ok(sent);
                    }
                    Err(full) => {
                        frame = Some(full);
                        state.waiting_senders += 1;
                        waiting_since.get_or_insert_with(Instant::now);
                    }
                }
            }

            notified.await;
        }
    }

    /// Sends from a thread that is not an async task, such as a blocking
    /// inference thread. Never call it from an async task: it blocks the thread.
    pub fn send_blocking(&self, frame: Frame) -> Result<Sent, Closed> {
        futures::executor::block_on(self.send(frame))
    }

    fn try_push_control(&self, state: &mut State, frame: Frame) -> Result<Sent, Frame> {
        if state.control.len() >= self.shared.config.control_capacity {
            return Err(frame);
        }
        if frame.as_control() == Some(&Control::Interrupt) {
            let discarded = state.discard_through(frame.meta.turn);
            self.shared.metrics.record_drop(DropReason::Interrupted, discarded);
            self.shared.interrupted_through.fetch_max(frame.meta.turn.0, Ordering::Release);
        }
        state.control.push_back(Queued { frame, enqueued: Instant::now() });
        Ok(Sent::Queued)
    }

    fn try_push_data(&self, state: &mut State, frame: Frame) -> Result<Sent, Frame> {
        let config = &self.shared.config;
        if !state.data_full(config) {
            state.push_data(frame);
            return Ok(Sent::Queued);
        }
        match config.policy {
            OverflowPolicy::Block => Err(frame),
            OverflowPolicy::DropNewest => {
                self.shared.metrics.record_drop(DropReason::Newest, 1);
                Ok(Sent::Dropped)
            }
            OverflowPolicy::DropOldest => {
                let mut discarded = 0;
                while state.data_full(config) && state.pop_data().is_some() {
                    discarded += 1;
                }
                state.push_data(frame);
                self.shared.metrics.record_drop(DropReason::Oldest, discarded);
                Ok(Sent::QueuedAfterDrop)
            }
        }
    }

    /// Returns the edge's counters.
    pub fn metrics(&self) -> &Arc<EdgeMetrics> {
        &self.shared.metrics
    }

    /// Returns whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !self.shared.state.lock().receiver_alive
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.state.lock().senders += 1;
        Sender { shared: Arc::clone(&self.shared) }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.senders -= 1;
        if state.senders == 0 {
            state.ready.notify_one();
        }
    }
}

/// The result of [`Receiver::try_recv`].
#[derive(Debug)]
pub enum TryRecv {
    /// A frame.
    Frame(Frame),
    /// Nothing queued now; more may come.
    Empty,
    /// Nothing queued and every sender is gone.
    Closed,
}

impl Receiver {
    /// Takes the next frame without waiting: priority events first, then data
    /// in the order it was sent.
    pub fn try_recv(&mut self) -> TryRecv {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        let queued = match state.control.pop_front() {
            Some(queued) => queued,
            None => match state.pop_data() {
                Some(queued) => queued,
                None if state.senders == 0 => return TryRecv::Closed,
                None => return TryRecv::Empty,
            },
        };
        state.queue_time.record(queued.enqueued.elapsed());
        let wake_senders = state.waiting_senders > 0;
        drop(state);

        shared.metrics.delivered.fetch_add(1, Ordering::Relaxed);
        if wake_senders {
            shared.space.notify_waiters();
        }
        TryRecv::Frame(queued.frame)
    }

    /// Waits for the next frame; `None` once every sender is gone and the
    /// queue is empty.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            match self.try_recv() {
                TryRecv::Frame(frame) => return Some(frame),
                TryRecv::Closed => return None,
                TryRecv::Empty => {
                    let ready = Arc::clone(&self.shared.state.lock().ready);
                    ready.notified().await;
                }
            }
        }
    }

    /// Waits for the next frame from a thread that is not an async task.
    pub fn recv_blocking(&mut self) -> Option<Frame> {
        futures::executor::block_on(self.recv())
    }

    /// Returns the counter of the highest turn cancelled by an interrupt sent
    /// on this edge (0 for none), updated when the interrupt is queued.
    pub fn interrupt_signal(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.interrupted_through)
    }

    /// Returns whether a priority event is queued.
    pub(crate) fn has_priority(&self) -> bool {
        !self.shared.state.lock().control.is_empty()
    }

    /// Makes the receiver's wake-ups go to `ready`, shared with other inputs
    /// of the same stage.
    pub(crate) fn rebind(self, ready: Arc<Notify>) -> Self {
        let previous = std::mem::replace(&mut self.shared.state.lock().ready, ready);
        // A wake-up already stored in the old notifier must not be lost.
        let state = self.shared.state.lock();
        if !state.data.is_empty() || !state.control.is_empty() || state.senders == 0 {
            state.ready.notify_one();
        }
        drop(state);
        drop(previous);
        self
    }

    /// Returns the number of data frames queued now.
    pub fn depth(&self) -> usize {
        self.shared.state.lock().data.len()
    }

    /// Returns the edge's counters.
    pub fn metrics(&self) -> &Arc<EdgeMetrics> {
        &self.shared.metrics
    }

    /// Returns the edge's configuration.
    pub fn config(&self) -> &EdgeConfig {
        &self.shared.config
    }

    /// Returns a snapshot of the edge's counters.
    pub fn report(&self) -> EdgeReport {
        edge_report(&self.shared)
    }

    pub(crate) fn report_handle(&self) -> EdgeReportHandle {
        EdgeReportHandle { shared: Arc::clone(&self.shared) }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let discarded = {
            let mut state = self.shared.state.lock();
            state.receiver_alive = false;
            let count = state.data.len() + state.control.len();
            state.data.clear();
            state.control.clear();
            count as u64
        };
        self.shared.metrics.record_drop(DropReason::ReceiverClosed, discarded);
        self.shared.space.notify_waiters();
    }
}

/// Reads an edge's counters after its halves have moved into stage tasks.
#[derive(Clone)]
pub(crate) struct EdgeReportHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for EdgeReportHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeReportHandle").field("edge", &self.shared.metrics.label).finish()
    }
}

impl EdgeReportHandle {
    pub(crate) fn report(&self) -> EdgeReport {
        edge_report(&self.shared)
    }
}

fn edge_report(shared: &Shared) -> EdgeReport {
    let (depth, high_water, queue_time) = {
        let state = shared.state.lock();
        (state.data.len(), state.high_water, state.queue_time.clone())
    };
    let metrics = &shared.metrics;
    let drops = DropReason::ALL
        .iter()
        .map(|&reason| (reason, metrics.drops(reason)))
        .filter(|&(_, count)| count > 0)
        .collect();
    EdgeReport {
        edge: metrics.label.clone(),
        sent: metrics.sent(),
        delivered: metrics.delivered(),
        depth,
        high_water,
        blocked_sends: metrics.blocked_sends.load(Ordering::Relaxed),
        blocked_micros: metrics.blocked_nanos.load(Ordering::Relaxed) / 1_000,
        queue_p50_micros: queue_time.quantile(0.5).as_secs_f64() * 1e6,
        queue_p99_micros: queue_time.quantile(0.99).as_secs_f64() * 1e6,
        drops,
        queue_time,
    }
}
