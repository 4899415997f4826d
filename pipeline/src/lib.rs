//! The contract and runtime of mentis pipelines.
//!
//! - [`Frame`]s flow on bounded [`edge`]s between [`Stage`]s. Each edge has a
//!   capacity in frames and in media time, an [`OverflowPolicy`], and a
//!   priority lane on which interrupts overtake queued data.
//! - A [`GraphBuilder`] validates formats, ports, cycles and the
//!   [`PrivacyTier`] before anything runs, and builds a [`Pipeline`].
//! - [`Pipeline::start`] runs one task per stage; a [`Session`] can be
//!   cancelled, waited on, and asked for its [`SessionReport`].
//! - [`Processor`] is the easy way to write a stage, and puts model inference
//!   on a blocking thread when its spec says [`Execution::Blocking`].
//!
//! This crate contains no backend code and installs no tracing subscriber.

pub mod basic;
pub mod edge;
pub mod egress;
pub mod error;
pub mod format;
pub mod frame;
pub mod graph;
mod histogram;
pub mod id;
pub mod privacy;
pub mod report;
pub mod ring;
pub mod runtime;
pub mod secret;
pub mod stage;
mod sync;
pub mod wrap;

pub use edge::{DropReason, EdgeConfig, OverflowPolicy};
pub use egress::{BackendUsage, ConnectionRecord, Destination, EgressLog, EgressRecord, UsageLog, UsageRecord};
pub use error::{ErrorClass, SessionError, StageError};
pub use format::{AudioFormat, Codec, PortFormat, SampleFormat};
pub use frame::{
    AudioData, Control, EncodedAudio, Frame, FrameMeta, MediaTime, Payload, Samples, StageFailure, TextDelta, Transcript,
    TranscriptKind,
};
pub use graph::{GraphBuilder, GraphError, NodeId};
pub use histogram::LatencyHistogram;
pub use id::{SessionId, StageName, TurnId};
pub use privacy::{Egress, PrivacyError, PrivacyPolicy, PrivacyTier};
pub use report::{SessionReport, TurnClock, TurnMark};
pub use runtime::{Pipeline, Session};
pub use secret::Secret;
pub use stage::{Emitter, Execution, Inbox, InterruptWatch, Outbox, Processor, ProcessorStage, Stage, StageFuture, StageIo, StageSpec, processor};
