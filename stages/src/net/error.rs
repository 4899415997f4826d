//! Failures of the network transport, classified by what the caller can do.

use std::net::SocketAddr;
use std::time::Duration;

use mentis_pipeline::{PrivacyError, StageError};

/// A failure to reach a backend or to read its response.
///
/// Endpoints in these errors are shown without credentials, query or
/// fragment ([`mentis_pipeline::privacy::redact_url`]), and no error carries a
/// request header, so an API key never appears in one.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The endpoint URL cannot be used.
    #[error("endpoint {endpoint} is not usable: {reason}")]
    BadEndpoint {
        /// The endpoint.
        endpoint: String,
        /// The problem and the fix.
        reason: String,
    },
    /// A cloud backend was given a plaintext URL.
    #[error("endpoint {endpoint} of the cloud backend {backend} is plain {scheme}; cloud backends connect only over TLS, so use {secure}")]
    Plaintext {
        /// The backend.
        backend: &'static str,
        /// The endpoint.
        endpoint: String,
        /// The scheme given.
        scheme: String,
        /// The scheme to use instead.
        secure: &'static str,
    },
    /// The privacy tier forbids the addresses the host resolved to.
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
    /// The host name could not be resolved.
    #[error("could not resolve {host}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// No address of the host accepted a connection.
    #[error("could not connect to {endpoint} at {address}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The last address tried.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting (TCP and TLS) took longer than the connect timeout.
    #[error("connecting to {endpoint} took longer than {after:?}")]
    ConnectTimeout {
        /// The endpoint.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
    /// The TLS handshake failed, for example because the certificate does not verify.
    #[error("TLS with {endpoint} failed: {reason}; if the server uses a private CA, add it with the backend's `ca_file` option")]
    Tls {
        /// The endpoint.
        endpoint: String,
        /// The TLS library's error.
        reason: String,
    },
    /// The TLS settings could not be built.
    #[error("TLS settings: {0}")]
    TlsConfig(String),
    /// The server sent nothing within the first-byte timeout.
    #[error("{endpoint} sent no response within {after:?}")]
    FirstByteTimeout {
        /// The endpoint.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
    /// The server went silent mid-response for longer than the idle timeout.
    #[error("{endpoint} sent nothing for {after:?} in the middle of a response")]
    IdleTimeout {
        /// The endpoint.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
    /// The server responded with an error status.
    #[error("{endpoint} responded with HTTP {status}{hint}: {body:?}")]
    Status {
        /// The endpoint.
        endpoint: String,
        /// The status code.
        status: u16,
        /// The start of the response body, a maximum of 300 characters.
        body: String,
        /// The delay from a `Retry-After` header.
        retry_after: Option<Duration>,
        /// Advice for the status, empty or starting with "; ".
        hint: &'static str,
    },
    /// The HTTP exchange failed: the connection dropped or the response is not HTTP.
    #[error("HTTP exchange with {endpoint} failed: {reason}")]
    Http {
        /// The endpoint.
        endpoint: String,
        /// The HTTP library's error.
        reason: String,
    },
    /// The WebSocket failed or closed unexpectedly.
    #[error("WebSocket with {endpoint} failed: {reason}")]
    WebSocket {
        /// The endpoint.
        endpoint: String,
        /// The cause of the failure or close.
        reason: String,
    },
    /// The server sent something the protocol does not allow.
    #[error("{endpoint} broke the protocol: {detail}")]
    Protocol {
        /// The endpoint.
        endpoint: String,
        /// The violation.
        detail: String,
    },
}

impl NetError {
    /// Returns whether trying again, later or at another address, may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            NetError::Connect { .. }
            | NetError::ConnectTimeout { .. }
            | NetError::Resolve { .. }
            | NetError::FirstByteTimeout { .. }
            | NetError::IdleTimeout { .. }
            | NetError::Http { .. }
            | NetError::WebSocket { .. } => true,
            NetError::Status { status, .. } => is_retryable_status(*status),
            NetError::BadEndpoint { .. }
            | NetError::Plaintext { .. }
            | NetError::Privacy(_)
            | NetError::Tls { .. }
            | NetError::TlsConfig(_)
            | NetError::Protocol { .. } => false,
        }
    }

    /// Returns the delay the server requested with `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            NetError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Returns whether an HTTP status means "try again later": request timeout,
/// too many requests, and the server errors that proxies and overloaded
/// servers send.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504 | 529)
}

/// Returns advice for an error status.
pub(crate) fn status_hint(status: u16) -> &'static str {
    match status {
        401 => "; the API key was refused: check the key the configuration names",
        403 => "; the API key may not use this model or endpoint",
        404 => "; check the endpoint URL and the model name",
        429 => "; the provider limits the request rate",
        _ => "",
    }
}

impl From<NetError> for StageError {
    fn from(error: NetError) -> Self {
        let message = error.to_string();
        let retry_after = error.retry_after();
        let stage_error = match &error {
            _ if error.is_retryable() => StageError::retryable(message),
            NetError::BadEndpoint { .. }
            | NetError::Plaintext { .. }
            | NetError::Privacy(_)
            | NetError::TlsConfig(_)
            | NetError::Tls { .. } => StageError::config(message),
            NetError::Status { status, .. } if matches!(status, 400..=404) => StageError::config(message),
            _ => StageError::fatal(message),
        };
        let stage_error = match retry_after {
            Some(delay) => stage_error.with_retry_after(delay),
            None => stage_error,
        };
        stage_error.with_source(error)
    }
}
