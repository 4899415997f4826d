//! The self-hostable server that apps connect to when their pipeline runs off
//! the device. Nothing is implemented yet: the crate exists so that the
//! workspace layout is fixed and the root package can re-export it.

pub use mentis_pipeline as pipeline;

pub mod auth;
pub mod client;
pub mod config;
pub mod limits;
pub mod metrics;
pub mod pipelines;
pub mod protocol;
pub mod recording;
pub mod server;
pub mod session;
pub mod tenants;
pub mod tls;
pub mod records;
pub mod redis;
pub mod store;
