//! Running a validated graph: one task per stage, cancellation, shutdown and
//! error propagation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::egress::{EgressLog, UsageLog};
use crate::edge::{EdgeReportHandle, channel_with_notify};
use crate::error::{SessionError, StageError};
use crate::frame::{Control, Frame, FrameMeta};
use crate::graph::{EdgeSpec, Node};
use crate::id::{SessionId, StageName};
use crate::privacy::{PrivacyPolicy, PrivacyTier};
use crate::report::{SessionReport, StageReport, TurnClock};
use crate::stage::{Inbox, Outbox, SharedCounters, Stage, StageIo};

/// A validated graph, ready to run one session.
pub struct Pipeline {
    policy: PrivacyPolicy,
    nodes: Vec<Node>,
    edges: Vec<EdgeSpec>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("tier", &self.policy.tier())
            .field("stages", &self.stage_names())
            .field("edges", &self.edges)
            .finish()
    }
}

impl Pipeline {
    pub(crate) fn new(policy: PrivacyPolicy, nodes: Vec<Node>, edges: Vec<EdgeSpec>) -> Self {
        Pipeline { policy, nodes, edges }
    }

    /// Returns the stage names in the order they were added.
    pub fn stage_names(&self) -> Vec<StageName> {
        self.nodes.iter().map(|node| node.spec.name.clone()).collect()
    }

    /// Returns the privacy tier the pipeline was built for.
    pub fn tier(&self) -> PrivacyTier {
        self.policy.tier()
    }

    /// Spawns one task per stage on the current tokio runtime and returns the
    /// running session.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn start(self, session: SessionId) -> Session {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let turns = TurnClock::default();
        let egress = EgressLog::default();
        let usage = UsageLog::default();
        let node_count = self.nodes.len();

        // One wake-up notifier per stage, shared by all its input edges.
        let ready: Vec<Arc<Notify>> = (0..node_count).map(|_| Arc::new(Notify::new())).collect();
        let mut inputs: Vec<Vec<_>> = (0..node_count).map(|_| Vec::new()).collect();
        let mut outputs: Vec<Vec<_>> = (0..node_count).map(|_| Vec::new()).collect();
        let mut edge_reports = Vec::with_capacity(self.edges.len());
        for edge in &self.edges {
            let label = format!("{} -> {}", self.nodes[edge.from].spec.name, self.nodes[edge.to].spec.name);
            let (sender, receiver) = channel_with_notify(label, edge.config, Arc::clone(&ready[edge.to]));
            edge_reports.push(receiver.report_handle());
            outputs[edge.from].push(sender);
            inputs[edge.to].push(receiver);
        }

        let mut tasks = JoinSet::new();
        let mut task_stages = HashMap::new();
        let mut stage_counters = Vec::with_capacity(node_count);
        let nodes = self.nodes.into_iter().zip(inputs).zip(outputs).zip(ready);
        for (((node, stage_inputs), stage_outputs), stage_ready) in nodes {
            let counters = SharedCounters::default();
            stage_counters.push((node.spec.name.clone(), Arc::clone(&counters)));
            let io = StageIo {
                inbox: Inbox::new(stage_inputs, stage_ready, cancel.clone(), Arc::clone(&counters)),
                outbox: Outbox::new(stage_outputs, session, counters, cancel.clone()),
                name: node.spec.name.clone(),
                turns: turns.clone(),
                policy: self.policy.clone(),
                egress: egress.clone(),
                usage: usage.clone(),
                tracker: Some(tracker.clone()),
            };
            let span = tracing::info_span!("stage", session = session.0, stage = %node.spec.name);
            let future = run_stage(node.stage, io, cancel.clone());
            let handle = tasks.spawn(tracker.track_future(future.instrument(span)));
            task_stages.insert(handle.id(), node.spec.name);
        }
        tracker.close();
        tracing::info!(session = session.0, stages = node_count, tier = %self.policy.tier(), "session started");

        Session {
            id: session,
            tier: self.policy.tier(),
            cancel,
            tracker,
            tasks,
            task_stages,
            stage_counters,
            edge_reports,
            turns,
            egress,
            usage,
            first_error: Arc::new(Mutex::new(None)),
        }
    }
}

/// Runs one stage to completion or cancellation, then closes its outputs.
async fn run_stage(mut stage: Box<dyn Stage>, mut io: StageIo, cancel: CancellationToken) -> Result<(), StageError> {
    let result = {
        let run = stage.run(&mut io);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            result = run => result,
        }
    };
    if result.is_ok() && !cancel.is_cancelled() {
        // End of stream travels in order behind the data it follows.
        let meta = io.outbox.next_meta(crate::id::TurnId::NONE, crate::frame::MediaTime::ZERO);
        let end = Frame::control(FrameMeta { timestamp: crate::frame::MediaTime::ZERO, ..meta }, Control::EndOfStream);
        // A downstream stage that already stopped needs no end of stream.
        let _ = io.outbox.send(end).await;
    }
    result
}

/// A running session of a pipeline.
pub struct Session {
    id: SessionId,
    tier: PrivacyTier,
    cancel: CancellationToken,
    tracker: TaskTracker,
    tasks: JoinSet<Result<(), StageError>>,
    task_stages: HashMap<Id, StageName>,
    stage_counters: Vec<(StageName, SharedCounters)>,
    edge_reports: Vec<EdgeReportHandle>,
    turns: TurnClock,
    egress: EgressLog,
    usage: UsageLog,
    first_error: Arc<Mutex<Option<SessionError>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("tier", &self.tier).finish_non_exhaustive()
    }
}

impl Session {
    /// Returns the session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Returns a token that cancels the session when triggered.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Returns the session's per-turn latency marks.
    pub fn turns(&self) -> &TurnClock {
        &self.turns
    }

    /// Returns the session's record of connections that left the device.
    pub fn egress(&self) -> &EgressLog {
        &self.egress
    }

    /// Asks every stage to stop now, without draining. [`Session::wait`]
    /// then returns once every task and blocking thread has ended.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Returns the number of stage tasks and blocking threads still running.
    pub fn live_tasks(&self) -> usize {
        self.tracker.len()
    }

    /// Returns a snapshot of the session's metrics.
    pub fn report(&self) -> SessionReport {
        SessionReport {
            session: self.id,
            tier: self.tier,
            stages: self
                .stage_counters
                .iter()
                .map(|(name, counters)| StageReport::new(name.to_string(), &counters.lock()))
                .collect(),
            edges: self.edge_reports.iter().map(EdgeReportHandle::report).collect(),
            turns: self.turns.reports(),
            egress: self.egress.records(),
            usage: self.usage.records(),
        }
    }

    /// Waits until every stage has finished: after end of stream has drained
    /// through the graph, after [`Session::cancel`], or after the first stage
    /// error, which cancels the rest. Returns the report, or the first error
    /// with the name of the stage that raised it.
    pub async fn wait(mut self) -> Result<SessionReport, SessionError> {
        while let Some(joined) = self.tasks.join_next_with_id().await {
            let failure = match joined {
                Ok((_, Ok(()))) => None,
                Ok((id, Err(error))) => Some(SessionError::Stage { stage: self.stage_of(id), source: error }),
                Err(join_error) => {
                    let stage = self.stage_of(join_error.id());
                    let message = if join_error.is_panic() {
                        panic_message(join_error.into_panic())
                    } else {
                        "the task was aborted".to_owned()
                    };
                    Some(SessionError::Panic { stage, message })
                }
            };
            if let Some(error) = failure {
                tracing::error!(session = self.id.0, stage = %error.stage(), error = %error, "stage failed; stopping the session");
                self.cancel.cancel();
                self.first_error.lock().get_or_insert(error);
            }
        }
        // Blocking threads hold tracker tokens; they end at their next receive.
        self.tracker.wait().await;

        let report = self.report();
        match self.first_error.lock().take() {
            Some(error) => Err(error),
            None => {
                tracing::info!(session = self.id.0, "session ended");
                Ok(report)
            }
        }
    }

    /// Cancels the session and waits for it to stop, at most `limit`; returns
    /// whether everything stopped in time.
    pub async fn shutdown(self, limit: Duration) -> bool {
        self.cancel();
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }

    fn stage_of(&self, id: Id) -> StageName {
        match self.task_stages.get(&id) {
            Some(name) => name.clone(),
            None => unreachable!("every task of the session is registered with its stage"),
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
