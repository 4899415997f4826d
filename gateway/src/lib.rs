//! The self-hostable server that apps connect to when their pipeline runs off
//! the device: WebSocket voice sessions authenticated by signed tokens,
//! per-tenant limits, and the privacy records API (consent, export,
//! deletion, retention purge).
//!
//! - [`server`] serves HTTP and WebSocket sessions ([`session`], [`protocol`]),
//!   with tokens from [`auth`], limits from [`limits`] and [`metrics`].
//! - [`store`] keeps tenants, hashed API keys, consent, sessions,
//!   transcripts, audio and the audit log, in SQLite or PostgreSQL;
//!   [`directory`] and [`recording`] connect it to the server, and
//!   [`records`] serves its privacy API.
//! - [`redis`] shares limit counters and the session registry between
//!   gateway processes.
//! - [`config`] reads the `mentis-gateway` binary's TOML file; [`client`]
//!   is the client the example and the tests use.

pub use mentis_pipeline as pipeline;

pub mod auth;
pub mod client;
pub mod config;
pub mod directory;
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
