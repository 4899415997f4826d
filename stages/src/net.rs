//! The transport shared by every network backend.
//!
//! - [`sse`], [`ndjson`] and [`pcm`]: byte-level streaming parsers that give
//!   the same result however the bytes are split across reads.

pub mod connect;
pub mod endpoint;
pub mod error;
pub mod http;
pub mod ndjson;
pub mod pcm;
pub mod retry;
pub mod sse;
pub mod ws;

pub use connect::{Conn, Connector, Timeouts, tls_config};
pub use endpoint::{Endpoint, Hosting};
pub use error::NetError;
