//! mentis: real-time voice AI pipelines with an enforced privacy tier.
//!
//! This crate re-exports the workspace's crates under one name:
//! [`pipeline`] (frames, edges, graph, runtime, metrics, privacy policy),
//! [`stages`] (stage implementations) and [`gateway`] (the server).

pub use mentis_gateway as gateway;
pub use mentis_pipeline as pipeline;
pub use mentis_stages as stages;

#[cfg(feature = "network")]
pub mod config;
#[cfg(feature = "on-device")]
pub mod conversation;
