//! Opening connections: resolve, check against the tier, connect, count, TLS.
//!
//! Every connection a network stage opens goes through [`Connector::connect`],
//! which
//!
//! 1. resolves the host and checks every address against the pipeline's
//!    [`PrivacyPolicy`] right before connecting, so a name that resolves
//!    differently at run time than at build time cannot leak data;
//! 2. connects within the connect timeout;
//! 3. records the connection in the session's [`EgressLog`] and counts every
//!    byte both ways;
//! 4. for `https` and `wss`, runs TLS through rustls, verifying the
//!    certificate against the webpki roots plus an optional private CA.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mentis_pipeline::privacy::redact_url;
use mentis_pipeline::{ConnectionRecord, Destination, EgressLog, PrivacyPolicy, StageIo, StageName};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use url::Url;

use super::error::NetError;

/// Default limit for TCP connect plus TLS handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit from sending a request to the first byte of the response.
/// LLM providers can take seconds to start a long prompt, while speech
/// services respond in well under a second.
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Default limit of silence in the middle of a response.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// The time limits of one backend's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake.
    #[serde(with = "millis", rename = "connect_ms", default = "default_connect")]
    pub connect: Duration,
    /// From the request to the first byte of the response.
    #[serde(with = "millis", rename = "first_byte_ms", default = "default_first_byte")]
    pub first_byte: Duration,
    /// Silence in the middle of a response.
    #[serde(with = "millis", rename = "idle_ms", default = "default_idle")]
    pub idle: Duration,
}

fn default_connect() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_first_byte() -> Duration {
    DEFAULT_FIRST_BYTE_TIMEOUT
}
fn default_idle() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: DEFAULT_CONNECT_TIMEOUT, first_byte: DEFAULT_FIRST_BYTE_TIMEOUT, idle: DEFAULT_IDLE_TIMEOUT }
    }
}

/// Builds the rustls client settings: the webpki roots, plus the
/// certificates of `extra_ca` (a PEM file) for self-hosted servers with a
/// private CA.
pub fn tls_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, NetError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = extra_ca {
        let certificates = CertificateDer::pem_file_iter(path)
            .map_err(|error| NetError::TlsConfig(format!("cannot read the CA file {}: {error}", path.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| NetError::TlsConfig(format!("the CA file {} is not PEM: {error}", path.display())))?;
        if certificates.is_empty() {
            return Err(NetError::TlsConfig(format!(
                "the CA file {} holds no certificate; it must contain PEM `CERTIFICATE` blocks",
                path.display()
            )));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|error| {
                NetError::TlsConfig(format!("a certificate in {} is not a usable CA: {error}", path.display()))
            })?;
        }
    }
    // rustls marks its ring provider deprecated because ring lacks the
    // post-quantum key exchange. ring is kept because it builds with cc alone,
    // without cmake.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| NetError::TlsConfig(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opener of the connections of one stage (see the [module docs](self)).
#[derive(Clone)]
pub struct Connector {
    stage: StageName,
    policy: PrivacyPolicy,
    egress: EgressLog,
    tls: Arc<ClientConfig>,
    timeouts: Timeouts,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("stage", &self.stage)
            .field("tier", &self.policy.tier())
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Creates a connector for the stage running with `io`: its name, the
    /// pipeline's policy and the session's egress log.
    pub fn for_stage(io: &StageIo, tls: Arc<ClientConfig>, timeouts: Timeouts) -> Self {
        Connector::new(io.name.clone(), io.policy.clone(), io.egress.clone(), tls, timeouts)
    }

    /// Creates a connector from its parts.
    pub fn new(
        stage: StageName,
        policy: PrivacyPolicy,
        egress: EgressLog,
        tls: Arc<ClientConfig>,
        timeouts: Timeouts,
    ) -> Self {
        Connector { stage, policy, egress, tls, timeouts }
    }

    /// Returns the time limits.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Returns the stage the connector belongs to.
    pub fn stage(&self) -> &StageName {
        &self.stage
    }

    /// Opens a connection to the host of `url`, with TLS for `https` and `wss`.
    pub async fn connect(&self, url: &Url) -> Result<Conn, NetError> {
        let endpoint = redact_url(url);
        let limit = self.timeouts.connect;
        match tokio::time::timeout(limit, self.connect_unbounded(url, &endpoint)).await {
            Ok(result) => result,
            Err(_) => Err(NetError::ConnectTimeout { endpoint, after: limit }),
        }
    }

    async fn connect_unbounded(&self, url: &Url, endpoint: &str) -> Result<Conn, NetError> {
        let tls = match url.scheme() {
            "https" | "wss" => true,
            "http" | "ws" => false,
            other => {
                return Err(NetError::BadEndpoint {
                    endpoint: endpoint.to_owned(),
                    reason: format!("the scheme {other:?} is not http, https, ws or wss"),
                });
            }
        };
        let Some(host) = url.host_str() else {
            return Err(NetError::BadEndpoint { endpoint: endpoint.to_owned(), reason: "the URL has no host".to_owned() });
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });

        // The addresses are checked right before they are used.
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|error| NetError::Resolve { host: host.clone(), reason: error.to_string() })?
            .collect();
        if addresses.is_empty() {
            return Err(NetError::Resolve { host, reason: "no addresses".to_owned() });
        }
        let ips: Vec<_> = addresses.iter().map(SocketAddr::ip).collect();
        self.policy.check_connect(&self.stage, url, &ips)?;

        let mut last_error = None;
        let mut connected = None;
        for address in &addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    connected = Some((stream, *address));
                    break;
                }
                Err(error) => last_error = Some((*address, error)),
            }
        }
        let (stream, address) = match (connected, last_error) {
            (Some(connected), _) => connected,
            (None, Some((address, source))) => {
                return Err(NetError::Connect { endpoint: endpoint.to_owned(), address, source });
            }
            (None, None) => return Err(NetError::Resolve { host, reason: "no addresses".to_owned() }),
        };
        // Small writes (audio frames, text pieces) must leave at once.
        let _ = stream.set_nodelay(true);

        let record = self.egress.open(&self.stage, Destination {
            host: host.clone(),
            address: address.ip(),
            port,
            scheme: url.scheme().to_owned(),
        });
        tracing::debug!(stage = %self.stage, endpoint, %address, "connected");
        let counted = Counted { inner: stream, record };
        if !tls {
            return Ok(Conn { inner: ConnInner::Plain(counted) });
        }

        let server_name = ServerName::try_from(host.clone())
            .map_err(|error| NetError::BadEndpoint { endpoint: endpoint.to_owned(), reason: error.to_string() })?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls));
        let stream = connector
            .connect(server_name, counted)
            .await
            .map_err(|error| NetError::Tls { endpoint: endpoint.to_owned(), reason: error.to_string() })?;
        Ok(Conn { inner: ConnInner::Tls(Box::new(stream)) })
    }
}

/// A TCP stream whose bytes are counted in the egress log.
#[derive(Debug)]
struct Counted {
    inner: TcpStream,
    record: ConnectionRecord,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.record.received(buf.filled().len() - before);
        }
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = poll {
            self.record.sent(written);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An open connection, plain or TLS, counted in the egress log.
#[derive(Debug)]
pub struct Conn {
    inner: ConnInner,
}

#[derive(Debug)]
enum ConnInner {
    Plain(Counted),
    Tls(Box<tokio_rustls::client::TlsStream<Counted>>),
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            ConnInner::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ConnInner::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            ConnInner::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ConnInner::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            ConnInner::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ConnInner::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            ConnInner::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            ConnInner::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
