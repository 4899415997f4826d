//! The stage contract.
//!
//! A stage has a [`StageSpec`] (name, input and output formats, where its data
//! goes, how it runs) and a `run` method that receives frames from its
//! [`Inbox`] and emits frames through its [`Outbox`] until the inbox ends.
//!
//! Most stages transform one frame at a time and are easiest to write as a
//! [`Processor`]: a synchronous `process` call per frame, which the runtime
//! runs either on the async task ([`Execution::Inline`], for work of a few
//! microseconds) or on a dedicated blocking thread ([`Execution::Blocking`],
//! for model inference). Stages that hold connections implement [`Stage`]
//! directly and manage their sockets inside `run`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::edge::{Closed, DropReason, Receiver, Sender, Sent, TryRecv};
use crate::error::StageError;
use crate::format::PortFormat;
use crate::frame::{Control, Frame, FrameMeta};
use crate::histogram::LatencyHistogram;
use crate::id::{SessionId, StageName, TurnId};
use crate::egress::{EgressLog, UsageLog};
use crate::privacy::{Egress, PrivacyPolicy, PrivacyTier};
use crate::report::{TurnClock, TurnMark};

/// A boxed future returned by [`Stage::run`].
pub type StageFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StageError>> + Send + 'a>>;

/// The thread a stage's work runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Execution {
    /// On the async task: for work that takes microseconds per frame.
    Inline,
    /// On a dedicated blocking thread: for model inference and other work that
    /// would stall the async worker threads.
    Blocking,
}

/// The declaration of a stage: name, formats, egress and execution.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// The stage's name, unique within its graph.
    pub name: StageName,
    /// The accepted format, [`PortFormat::None`] for a source.
    pub input: PortFormat,
    /// The emitted format, [`PortFormat::None`] for a sink.
    pub output: PortFormat,
    /// The destination of data the stage sends outside the process.
    pub egress: Egress,
    /// The thread the stage's work runs on.
    pub execution: Execution,
}

impl StageSpec {
    /// Creates a spec for a stage that sends nothing off the device and runs inline.
    pub fn new(name: StageName, input: PortFormat, output: PortFormat) -> Self {
        StageSpec { name, input, output, egress: Egress::None, execution: Execution::Inline }
    }

    /// Returns the spec with the given egress.
    #[must_use]
    pub fn with_egress(mut self, egress: Egress) -> Self {
        self.egress = egress;
        self
    }

    /// Returns the spec with the given execution.
    #[must_use]
    pub fn with_execution(mut self, execution: Execution) -> Self {
        self.execution = execution;
        self
    }
}

/// A unit of processing in a graph.
pub trait Stage: Send + 'static {
    /// Describes the stage. Called once, when the stage is added to a graph.
    fn spec(&self) -> StageSpec;

    /// Runs the stage until its inbox ends ([`Inbox::recv`] returns `None`),
    /// then returns. The runtime sends end of stream downstream after a clean
    /// return and cancels the session after an error.
    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a>;
}

impl Stage for Box<dyn Stage> {
    fn spec(&self) -> StageSpec {
        (**self).spec()
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        (**self).run(io)
    }
}

/// Counters the runtime keeps for every stage.
#[derive(Debug, Default)]
pub(crate) struct StageCounters {
    pub(crate) frames_in: u64,
    pub(crate) frames_out: u64,
    pub(crate) processing: LatencyHistogram,
}

pub(crate) type SharedCounters = Arc<Mutex<StageCounters>>;

/// Hooks that wrappers such as [`crate::wrap::Timeout`] attach to an inbox.
pub(crate) trait InboxObserver: Send + Sync {
    fn frame_taken(&self, frame: &Frame);
    fn frame_done(&self);
}

/// Hooks that wrappers attach to an outbox.
pub(crate) trait OutboxObserver: Send + Sync {
    fn frame_emitted(&self);
}

/// The frames coming into a stage, merged from all its input edges.
///
/// Priority events of every edge come before any data. End of stream frames
/// are consumed here: `recv` returns `None` once every input edge has ended
/// or the session is cancelled. After an interrupt for turn `t`, data frames
/// of turn `t` and earlier that arrive late are dropped and counted.
pub struct Inbox {
    watch: InterruptWatch,
    inputs: Vec<Receiver>,
    ended: Vec<bool>,
    next: usize,
    ready: Arc<Notify>,
    cancel: CancellationToken,
    cancelled_through: Option<TurnId>,
    counters: SharedCounters,
    taken_at: Option<Instant>,
    /// Processing time of the previous frame, not yet recorded.
    processed: Option<std::time::Duration>,
    replay: std::collections::VecDeque<Frame>,
    pub(crate) observers: Vec<Arc<dyn InboxObserver>>,
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox").field("inputs", &self.inputs).finish_non_exhaustive()
    }
}

impl Inbox {
    pub(crate) fn new(
        inputs: Vec<Receiver>,
        ready: Arc<Notify>,
        cancel: CancellationToken,
        counters: SharedCounters,
    ) -> Self {
        let ended = vec![false; inputs.len()];
        let watch = InterruptWatch {
            signals: inputs.iter().map(Receiver::interrupt_signal).collect(),
            cancel: cancel.clone(),
        };
        Inbox {
            watch,
            inputs,
            ended,
            next: 0,
            ready,
            cancel,
            cancelled_through: None,
            counters,
            taken_at: None,
            processed: None,
            replay: std::collections::VecDeque::new(),
            observers: Vec::new(),
        }
    }

    /// Creates an inbox with no inputs, which ends at once. Sources get one.
    pub fn empty() -> Self {
        Inbox::new(Vec::new(), Arc::new(Notify::new()), CancellationToken::new(), SharedCounters::default())
    }

    /// Waits for the next frame; `None` at end of stream or cancellation.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.finish_observers();
        let next = self.next_frame().await;
        if next.is_none() {
            if let Some(processed) = self.processed.take() {
                self.counters.lock().processing.record(processed);
            }
        }
        next
    }

    async fn next_frame(&mut self) -> Option<Frame> {
        if let Some(frame) = self.replay.pop_front() {
            return Some(self.hand_out(frame));
        }
        loop {
            if self.cancel.is_cancelled() {
                return None;
            }
            match self.poll_inputs() {
                Poll::Frame(frame) => return Some(self.hand_out(frame)),
                Poll::Ended => return None,
                Poll::Empty => {}
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                () = self.ready.notified() => {}
            }
        }
    }

    /// Waits for the next frame from a blocking thread.
    pub fn recv_blocking(&mut self) -> Option<Frame> {
        futures::executor::block_on(self.recv())
    }

    /// Returns the cancellation token of the session.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Returns the last turn cancelled by an interrupt that passed this inbox.
    pub fn cancelled_through(&self) -> Option<TurnId> {
        self.cancelled_through
    }

    /// Returns a cheap, cloneable view of the interrupts sent towards this
    /// stage, for work that must stop before the interrupt is received.
    pub fn interrupt_watch(&self) -> InterruptWatch {
        self.watch.clone()
    }

    /// Puts frames back in front of the inbox, to be received again. Used by
    /// the retry wrapper to give a restarted stage the frames its failed
    /// attempt had not finished.
    pub(crate) fn push_front_replay(&mut self, frames: Vec<Frame>) {
        for frame in frames.into_iter().rev() {
            self.replay.push_front(frame);
        }
    }

    /// Ends the previous frame. Its processing time is measured now, when
    /// the stage requests the next frame, and recorded with the next frame's
    /// count under one lock.
    fn finish_observers(&mut self) {
        if let Some(taken_at) = self.taken_at.take() {
            self.processed = Some(taken_at.elapsed());
            for observer in &self.observers {
                observer.frame_done();
            }
        }
    }

    fn hand_out(&mut self, frame: Frame) -> Frame {
        {
            let mut counters = self.counters.lock();
            counters.frames_in += 1;
            if let Some(processed) = self.processed.take() {
                counters.processing.record(processed);
            }
        }
        let now = Instant::now();
        for observer in &self.observers {
            observer.frame_taken(&frame);
        }
        self.taken_at = Some(now);
        frame
    }

    fn poll_inputs(&mut self) -> Poll {
        let count = self.inputs.len();
        if count == 0 {
            return Poll::Ended;
        }

        // Priority events of every input come before data of any input. With one
        // input the receiver already returns its priority lane first.
        for index in 0..count {
            if count == 1 {
                break;
            }
            if self.ended[index] {
                continue;
            }
            if let Some(frame) = self.take_priority(index) {
                return Poll::Frame(frame);
            }
        }

        // Data round-robin, so one busy input cannot starve another.
        for offset in 0..count {
            let index = (self.next + offset) % count;
            if self.ended[index] {
                continue;
            }
            loop {
                match self.inputs[index].try_recv() {
                    TryRecv::Frame(frame) => {
                        if let Some(frame) = self.accept(index, frame) {
                            self.next = (index + 1) % count;
                            return Poll::Frame(frame);
                        }
                    }
                    TryRecv::Empty => break,
                    TryRecv::Closed => {
                        self.ended[index] = true;
                        break;
                    }
                }
            }
        }

        if self.ended.iter().all(|&ended| ended) { Poll::Ended } else { Poll::Empty }
    }

    fn take_priority(&mut self, index: usize) -> Option<Frame> {
        // A receiver returns priority frames first, so a peek is a try_recv
        // that only keeps priority frames. Data taken here is handled by accept.
        if !self.inputs[index].has_priority() {
            return None;
        }
        match self.inputs[index].try_recv() {
            TryRecv::Frame(frame) => self.accept(index, frame),
            TryRecv::Empty | TryRecv::Closed => None,
        }
    }

    /// Applies end of stream and stale-turn rules; `None` means the frame was consumed.
    fn accept(&mut self, index: usize, frame: Frame) -> Option<Frame> {
        match frame.as_control() {
            Some(Control::EndOfStream) => {
                self.ended[index] = true;
                return None;
            }
            Some(Control::Interrupt) => {
                let turn = frame.meta.turn;
                self.cancelled_through = Some(self.cancelled_through.map_or(turn, |t| t.max(turn)));
                return Some(frame);
            }
            Some(_) => return Some(frame),
            None => {}
        }
        if let Some(cancelled) = self.cancelled_through {
            if frame.meta.turn != TurnId::NONE && frame.meta.turn <= cancelled {
                self.inputs[index].metrics().record_drop(DropReason::StaleTurn, 1);
                return None;
            }
        }
        Some(frame)
    }
}

enum Poll {
    Frame(Frame),
    Empty,
    Ended,
}

/// The way out of a stage: a frame sent here reaches every output edge
/// (fan-out clones the frame, which copies no samples).
pub struct Outbox {
    outputs: Vec<Sender>,
    session: SessionId,
    seq: u64,
    counters: SharedCounters,
    pub(crate) observers: Vec<Arc<dyn OutboxObserver>>,
    cancel: CancellationToken,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox").field("outputs", &self.outputs).finish_non_exhaustive()
    }
}

impl Outbox {
    pub(crate) fn new(
        outputs: Vec<Sender>,
        session: SessionId,
        counters: SharedCounters,
        cancel: CancellationToken,
    ) -> Self {
        Outbox { outputs, session, seq: 0, counters, observers: Vec::new(), cancel }
    }

    /// Creates an outbox with no outputs, which accepts and discards frames. Sinks get one.
    pub fn empty(session: SessionId) -> Self {
        Outbox::new(Vec::new(), session, SharedCounters::default(), CancellationToken::new())
    }

    /// Sends a frame to every output edge, waiting where an edge blocks.
    /// Fails only when a receiving stage has stopped, which means the session
    /// is ending.
    ///
    /// A send that waits on a full edge gives up when the session is cancelled.
    pub async fn send(&mut self, frame: Frame) -> Result<(), StageError> {
        self.counters.lock().frames_out += 1;
        for observer in &self.observers {
            observer.frame_emitted();
        }
        let Some((last, rest)) = self.outputs.split_last() else {
            return Ok(());
        };
        for output in rest {
            deliver(cancellable(&self.cancel, output.send(frame.clone())).await)?;
        }
        deliver(cancellable(&self.cancel, last.send(frame)).await)
    }

    /// Sends from a blocking thread.
    pub fn send_blocking(&mut self, frame: Frame) -> Result<(), StageError> {
        futures::executor::block_on(self.send(frame))
    }

    /// Returns metadata for a new frame of this session with the next sequence
    /// number of this outbox.
    pub fn next_meta(&mut self, turn: TurnId, timestamp: crate::frame::MediaTime) -> FrameMeta {
        let meta = FrameMeta { session: self.session, turn, seq: self.seq, timestamp };
        self.seq += 1;
        meta
    }

    /// Returns the session this outbox belongs to.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// Returns whether the outbox has no output edges.
    pub fn is_unconnected(&self) -> bool {
        self.outputs.is_empty()
    }
}

/// The reason an outbox send did not deliver.
enum Undelivered {
    Closed(Frame),
    Cancelled,
}

async fn cancellable(
    cancel: &CancellationToken,
    send: impl Future<Output = Result<Sent, Closed>>,
) -> Result<Sent, Undelivered> {
    tokio::select! {
        biased;
        result = send => result.map_err(|Closed(frame)| Undelivered::Closed(frame)),
        () = cancel.cancelled() => Err(Undelivered::Cancelled),
    }
}

fn deliver(result: Result<Sent, Undelivered>) -> Result<(), StageError> {
    match result {
        Ok(_) => Ok(()),
        Err(Undelivered::Cancelled) => Err(StageError::fatal("the session was cancelled")),
        Err(Undelivered::Closed(frame)) => Err(StageError::fatal(format!(
            "the downstream stage stopped before a {} frame could be delivered",
            frame.kind_name()
        ))),
    }
}

/// A stage's inbox, outbox and session.
#[derive(Debug)]
pub struct StageIo {
    /// Frames in.
    pub inbox: Inbox,
    /// Frames out.
    pub outbox: Outbox,
    /// The stage's name, for logs.
    pub name: StageName,
    /// The session's per-turn latency marks.
    pub turns: TurnClock,
    /// The policy the pipeline was built for. Network stages check the
    /// addresses they connect to against it.
    pub policy: PrivacyPolicy,
    /// The session's record of connections that left the device.
    pub egress: EgressLog,
    /// The session's record of what each network backend used.
    pub usage: UsageLog,
    /// Keeps the session's task tracker open while a blocking thread of this
    /// stage runs, so that the session does not report itself stopped early.
    pub(crate) tracker: Option<tokio_util::task::TaskTracker>,
}

impl StageIo {
    /// Builds the I/O of a stage run outside a graph: frames come from `inputs`
    /// and go to `outputs`. Tests of single stages use it. The policy is the
    /// cloud tier's; [`StageIo::with_policy`] sets another.
    pub fn detached(name: StageName, session: SessionId, inputs: Vec<Receiver>, outputs: Vec<Sender>) -> Self {
        let ready = Arc::new(Notify::new());
        let inputs = inputs.into_iter().map(|receiver| receiver.rebind(Arc::clone(&ready))).collect();
        let counters = SharedCounters::default();
        let cancel = CancellationToken::new();
        StageIo {
            inbox: Inbox::new(inputs, ready, cancel.clone(), Arc::clone(&counters)),
            outbox: Outbox::new(outputs, session, counters, cancel),
            name,
            turns: TurnClock::default(),
            policy: PrivacyPolicy::new(PrivacyTier::Cloud),
            egress: EgressLog::default(),
            usage: UsageLog::default(),
            tracker: None,
        }
    }

    /// Returns the I/O with another privacy policy.
    #[must_use]
    pub fn with_policy(mut self, policy: PrivacyPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Returns the session id.
    pub fn session(&self) -> SessionId {
        self.outbox.session
    }

    /// Returns whether the session has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inbox.cancel.is_cancelled()
    }
}

/// Tells work in progress whether its turn was interrupted or its session
/// cancelled. Reading it costs one atomic load per input edge.
#[derive(Debug, Clone, Default)]
pub struct InterruptWatch {
    signals: Arc<[Arc<AtomicU64>]>,
    cancel: CancellationToken,
}

impl InterruptWatch {
    /// Returns whether work on `turn` should stop: an interrupt for `turn` or
    /// a later turn has been sent towards this stage, or the session is
    /// cancelled. The interrupt counts from the moment it is queued, before
    /// the stage receives it.
    pub fn should_stop(&self, turn: TurnId) -> bool {
        self.cancel.is_cancelled() || self.interrupted_through() >= turn && turn != TurnId::NONE
    }

    /// Returns the highest turn cancelled by an interrupt sent towards this stage.
    pub fn interrupted_through(&self) -> TurnId {
        let highest = self.signals.iter().map(|signal| signal.load(Ordering::Acquire)).max().unwrap_or(0);
        TurnId(highest)
    }

    /// Returns whether the session is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// The way out of a [`Processor`]: frames emitted here go downstream.
///
/// On a blocking thread each frame is sent at once, waiting where the edge
/// blocks, so a long call such as LLM generation streams its output. Inline,
/// frames are buffered and sent when the call returns. A send that fails
/// because the session is ending is kept and returned by the runtime after
/// the call, so `emit` itself never fails.
pub struct Emitter<'a> {
    /// The outbox frames go to at once, or `None` to buffer them.
    outbox: Option<&'a mut Outbox>,
    buffer: Vec<Frame>,
    session: SessionId,
    seq: u64,
    turns: TurnClock,
    watch: InterruptWatch,
    failure: Option<StageError>,
}

impl fmt::Debug for Emitter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter").field("session", &self.session).field("seq", &self.seq).finish_non_exhaustive()
    }
}

impl Emitter<'static> {
    /// Creates an emitter that buffers frames, for processors run outside a graph,
    /// as in unit tests. Its interrupt watch never fires.
    pub fn new(session: SessionId) -> Self {
        Emitter::with_parts(None, session, 0, TurnClock::default(), InterruptWatch::default())
    }
}

impl<'a> Emitter<'a> {
    pub(crate) fn with_parts(
        outbox: Option<&'a mut Outbox>,
        session: SessionId,
        seq: u64,
        turns: TurnClock,
        watch: InterruptWatch,
    ) -> Self {
        Emitter { outbox, buffer: Vec::with_capacity(8), session, seq, turns, watch, failure: None }
    }

    /// Sends a frame downstream.
    pub fn emit(&mut self, frame: Frame) {
        match &mut self.outbox {
            None => self.buffer.push(frame),
            Some(outbox) => {
                if self.failure.is_none() {
                    if let Err(error) = outbox.send_blocking(frame) {
                        self.failure = Some(error);
                    }
                }
            }
        }
    }

    /// Returns metadata for a new frame with the next sequence number.
    pub fn next_meta(&mut self, turn: TurnId, timestamp: crate::frame::MediaTime) -> FrameMeta {
        let meta = FrameMeta { session: self.session, turn, seq: self.seq, timestamp };
        self.seq += 1;
        meta
    }

    /// Records a latency mark for `turn` now; the first mark of each kind counts.
    pub fn mark(&self, turn: TurnId, mark: TurnMark) {
        self.turns.mark(turn, mark);
    }

    /// Returns the session's latency marks.
    pub fn turns(&self) -> &TurnClock {
        &self.turns
    }

    /// Returns whether work on `turn` should stop because it was interrupted
    /// or the session is ending. Long calls check it between steps, such as
    /// after each generated token.
    pub fn should_stop(&self, turn: TurnId) -> bool {
        self.watch.should_stop(turn) || self.failure.is_some()
    }

    /// Returns the interrupt watch, to hand to work on another thread.
    pub fn interrupt_watch(&self) -> &InterruptWatch {
        &self.watch
    }

    /// Removes and returns the buffered frames; empty when frames go out at once.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Frame> {
        self.buffer.drain(..)
    }

    /// Returns the buffered frames; empty when frames go out at once.
    pub fn frames(&self) -> &[Frame] {
        &self.buffer
    }

    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    pub(crate) fn take_failure(&mut self) -> Result<(), StageError> {
        self.failure.take().map_or(Ok(()), Err)
    }
}

/// A stage that handles one frame at a time with a synchronous call.
///
/// Data frames go to [`Processor::process`]. Control frames go to
/// [`Processor::control`] and are then forwarded downstream by the runtime,
/// so a processor cannot forget to pass an interrupt on. At end of stream
/// [`Processor::finish`] flushes what the processor still buffers.
pub trait Processor: Send + 'static {
    /// Describes the stage; `execution` picks the thread `process` runs on.
    fn spec(&self) -> StageSpec;

    /// Handles one data frame, emitting any number of frames.
    fn process(&mut self, frame: Frame, out: &mut Emitter<'_>) -> Result<(), StageError>;

    /// Reacts to a control event before it is forwarded. The default does nothing.
    fn control(&mut self, _control: &Control, _meta: &FrameMeta, _out: &mut Emitter<'_>) -> Result<(), StageError> {
        Ok(())
    }

    /// Emits what is still buffered at end of stream. The default emits nothing.
    fn finish(&mut self, _out: &mut Emitter<'_>) -> Result<(), StageError> {
        Ok(())
    }
}

/// Runs a [`Processor`] as a [`Stage`].
pub struct ProcessorStage<P> {
    processor: Option<P>,
}

impl<P> fmt::Debug for ProcessorStage<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessorStage").finish_non_exhaustive()
    }
}

impl<P: Processor> ProcessorStage<P> {
    /// Wraps a processor.
    pub fn new(processor: P) -> Self {
        ProcessorStage { processor: Some(processor) }
    }
}

/// Wraps a processor into a boxed stage, ready for a graph.
pub fn processor<P: Processor>(processor: P) -> Box<dyn Stage> {
    Box::new(ProcessorStage::new(processor))
}

impl<P: Processor> Stage for ProcessorStage<P> {
    fn spec(&self) -> StageSpec {
        match &self.processor {
            Some(processor) => processor.spec(),
            None => unreachable!("a processor stage is only empty while its blocking thread runs"),
        }
    }

    fn run<'a>(&'a mut self, io: &'a mut StageIo) -> StageFuture<'a> {
        Box::pin(async move {
            let Some(mut processor) = self.processor.take() else {
                return Err(StageError::fatal("the processor stage was run twice at once"));
            };
            match processor.spec().execution {
                Execution::Inline => {
                    let result = run_processor_inline(&mut processor, io).await;
                    self.processor = Some(processor);
                    result
                }
                Execution::Blocking => {
                    // The blocking thread needs owned values; they come back when it ends.
                    let session = io.session();
                    let owned_io = std::mem::replace(io, StageIo {
                        inbox: Inbox::empty(),
                        outbox: Outbox::empty(session),
                        name: io.name.clone(),
                        turns: io.turns.clone(),
                        policy: io.policy.clone(),
                        egress: io.egress.clone(),
                        usage: io.usage.clone(),
                        tracker: io.tracker.clone(),
                    });
                    let tracker_token = owned_io.tracker.as_ref().map(tokio_util::task::TaskTracker::token);
                    let span = tracing::Span::current();
                    let handle = tokio::task::spawn_blocking(move || {
                        let _tracked = tracker_token;
                        let _entered = span.enter();
                        let mut owned_io = owned_io;
                        let result = run_processor_blocking(&mut processor, &mut owned_io);
                        (processor, owned_io, result)
                    });
                    match handle.await {
                        Ok((processor, owned_io, result)) => {
                            self.processor = Some(processor);
                            *io = owned_io;
                            result
                        }
                        Err(join_error) => Err(StageError::fatal(format!(
                            "the blocking thread of the processor ended abnormally: {join_error}"
                        ))),
                    }
                }
            }
        })
    }
}

async fn run_processor_inline<P: Processor>(processor: &mut P, io: &mut StageIo) -> Result<(), StageError> {
    let watch = io.inbox.interrupt_watch();
    let mut emitter = Emitter::with_parts(None, io.session(), 0, io.turns.clone(), watch);
    while let Some(frame) = io.inbox.recv().await {
        let forward = handle_frame(processor, frame, &mut emitter)?;
        for out in emitter.drain() {
            io.outbox.send(out).await?;
        }
        if let Some(control) = forward {
            io.outbox.send(control).await?;
        }
    }
    if io.is_cancelled() {
        return Ok(());
    }
    processor.finish(&mut emitter)?;
    for out in emitter.drain() {
        io.outbox.send(out).await?;
    }
    Ok(())
}

fn run_processor_blocking<P: Processor>(processor: &mut P, io: &mut StageIo) -> Result<(), StageError> {
    let watch = io.inbox.interrupt_watch();
    let session = io.session();
    let mut seq = 0;
    while let Some(frame) = io.inbox.recv_blocking() {
        let mut emitter = Emitter::with_parts(Some(&mut io.outbox), session, seq, io.turns.clone(), watch.clone());
        let forward = handle_frame(processor, frame, &mut emitter)?;
        emitter.take_failure()?;
        seq = emitter.seq();
        if let Some(control) = forward {
            io.outbox.send_blocking(control)?;
        }
    }
    if io.is_cancelled() {
        return Ok(());
    }
    let mut emitter = Emitter::with_parts(Some(&mut io.outbox), session, seq, io.turns.clone(), watch);
    processor.finish(&mut emitter)?;
    emitter.take_failure()
}

/// Passes a frame to the processor; returns a control frame still to forward.
fn handle_frame<P: Processor>(processor: &mut P, frame: Frame, emitter: &mut Emitter<'_>) -> Result<Option<Frame>, StageError> {
    let span = tracing::trace_span!("frame", turn = frame.meta.turn.0, seq = frame.meta.seq);
    let _entered = span.enter();
    if let Some(control) = frame.as_control() {
        processor.control(control, &frame.meta, emitter)?;
        return Ok(Some(frame));
    }
    processor.process(frame, emitter)?;
    Ok(None)
}
