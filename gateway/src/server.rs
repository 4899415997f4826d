//! The HTTP and WebSocket server: routes, authentication, limits, TLS,
//! connection handling and shutdown.
//!
//! Routes:
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when the tenant directory responds and the server is
//!   not draining, 503 otherwise.
//! - `GET /metrics`: Prometheus text.
//! - `POST /v1/tokens`: exchanges an API key for a session token.
//! - `GET /v1/session`: the WebSocket session, authenticated by a token.
//!
//! Every rejection is answered with an HTTP status and a JSON body
//! `{"error": {"code": …, "message": …}}`, counted in
//! `mentis_gateway_rejections_total`, and logged with the tenant id (never
//! the key or token).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use mentis_pipeline::{PrivacyTier, Secret};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::auth::{Claims, TOKEN_VERSION, TokenSigner, unix_now};
use crate::limits::{InProcessLimits, LimitError, LimitStore, SessionLease};
use crate::metrics::GatewayMetrics;
use crate::pipelines::PipelineRegistry;
use crate::recording::{NoRecorder, TranscriptRecorder};
use crate::redis::SessionRegistry;
use crate::session::{SessionContext, SessionRegistration, SessionServices, SessionTiming, new_session_id, run_session};
use crate::tenants::{TenantDirectory, UserId};

/// Settings of the server as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Lifetime of a token when the request names none.
    pub token_ttl: Duration,
    /// Maximum lifetime a token request may ask for.
    pub max_token_ttl: Duration,
    /// TCP connections served at once; more are closed at once and counted.
    pub max_connections: usize,
    /// Sessions running at once over all tenants; more get 503.
    pub max_sessions: usize,
    /// Time a connection has for its TLS handshake and for each request's headers.
    pub handshake_timeout: Duration,
    /// Time sessions have to end after shutdown starts.
    pub drain_timeout: Duration,
    /// Per-session timing.
    pub timing: SessionTiming,
}

impl Default for ServerSettings {
    /// 5-minute tokens (1 hour at most), 4,096 connections, 2,048 sessions,
    /// 5 s handshakes, 10 s to drain.
    fn default() -> Self {
        ServerSettings {
            token_ttl: Duration::from_secs(300),
            max_token_ttl: Duration::from_secs(3_600),
            max_connections: 4_096,
            max_sessions: 2_048,
            handshake_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            timing: SessionTiming::default(),
        }
    }
}

/// The server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Plain ws was asked for on an address other hosts can reach.
    #[error("refusing to serve without TLS on {address}, which is not a loopback address; configure [tls] certificate and private_key, or listen on 127.0.0.1")]
    PlainTextNotLoopback {
        /// The listen address.
        address: SocketAddr,
    },
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The listen address.
        address: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

struct State_ {
    directory: Arc<dyn TenantDirectory>,
    limits: Arc<dyn LimitStore>,
    signer: TokenSigner,
    metrics: Arc<GatewayMetrics>,
    settings: ServerSettings,
    services: SessionServices,
    draining: AtomicBool,
    sessions: TaskTracker,
    session_slots: Arc<Semaphore>,
    /// Slots of this server each tenant has now.
    tenant_slots: Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>,
}

/// Returns the share of this server's session slots kept free for other
/// tenants: a tenth, and at least one. One tenant may hold at most
/// `max_sessions` minus this many, so its load alone never takes the last slots.
pub fn reserved_slots(max_sessions: usize) -> usize {
    (max_sessions / 10).max(1).min(max_sessions.saturating_sub(1))
}

/// One tenant's hold on a server slot; released when dropped.
struct TenantSlot {
    tenant: String,
    slots: Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>,
}

impl TenantSlot {
    /// Takes a slot for `tenant` unless it already has `most`.
    fn acquire(
        slots: &Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>,
        tenant: &str,
        most: usize,
    ) -> Option<TenantSlot> {
        let mut held = slots.lock();
        let count = held.entry(tenant.to_owned()).or_insert(0);
        if *count >= most {
            return None;
        }
        *count += 1;
        Some(TenantSlot { tenant: tenant.to_owned(), slots: Arc::clone(slots) })
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut held = self.slots.lock();
        if let Some(count) = held.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.tenant);
            }
        }
    }
}

type Shared = Arc<State_>;

/// Builds a [`Gateway`].
pub struct GatewayBuilder {
    directory: Arc<dyn TenantDirectory>,
    signer: TokenSigner,
    limits: Arc<dyn LimitStore>,
    pipelines: PipelineRegistry,
    recorder: Arc<dyn TranscriptRecorder>,
    settings: ServerSettings,
    routes: Option<Router>,
    registry: Option<SessionRegistration>,
}

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBuilder").field("pipelines", &self.pipelines.names()).field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// Sets the limit counters; in-process counters by default.
    #[must_use]
    pub fn limits(mut self, limits: Arc<dyn LimitStore>) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the pipelines clients may ask for.
    #[must_use]
    pub fn pipelines(mut self, pipelines: PipelineRegistry) -> Self {
        self.pipelines = pipelines;
        self
    }

    /// Sets where consented transcripts go; nowhere by default.
    #[must_use]
    pub fn recorder(mut self, recorder: Arc<dyn TranscriptRecorder>) -> Self {
        self.recorder = recorder;
        self
    }

    /// Sets the server settings.
    #[must_use]
    pub fn settings(mut self, settings: ServerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Registers every session in `registry` under this gateway's `instance`
    /// id while it runs; sessions are not registered by default.
    #[must_use]
    pub fn registry(mut self, registry: Arc<dyn SessionRegistry>, instance: impl Into<String>) -> Self {
        self.registry = Some(SessionRegistration { registry, instance: instance.into() });
        self
    }

    /// Adds routes served beside the gateway's own, such as the privacy records API.
    #[must_use]
    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Builds the gateway.
    pub fn build(self) -> Gateway {
        let metrics = Arc::new(GatewayMetrics::new());
        let shutdown = CancellationToken::new();
        let services = SessionServices {
            pipelines: self.pipelines,
            limits: Arc::clone(&self.limits),
            metrics: Arc::clone(&metrics),
            recorder: self.recorder,
            timing: self.settings.timing,
            shutdown,
            registry: self.registry,
        };
        let state = Arc::new(State_ {
            directory: self.directory,
            limits: self.limits,
            signer: self.signer,
            metrics,
            session_slots: Arc::new(Semaphore::new(self.settings.max_sessions)),
            tenant_slots: Arc::default(),
            settings: self.settings,
            services,
            draining: AtomicBool::new(false),
            sessions: TaskTracker::new(),
        });
        Gateway { state, routes: self.routes }
    }
}

/// The gateway server, ready to listen.
pub struct Gateway {
    state: Shared,
    routes: Option<Router>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("settings", &self.state.settings).finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts building a gateway with a tenant directory and a token signer.
    pub fn builder(directory: Arc<dyn TenantDirectory>, signer: TokenSigner) -> GatewayBuilder {
        GatewayBuilder {
            directory,
            signer,
            limits: Arc::new(InProcessLimits::new()),
            pipelines: PipelineRegistry::new(),
            recorder: Arc::new(NoRecorder),
            settings: ServerSettings::default(),
            routes: None,
            registry: None,
        }
    }

    /// Returns the process's metrics.
    pub fn metrics(&self) -> Arc<GatewayMetrics> {
        Arc::clone(&self.state.metrics)
    }

    /// Returns the router of every route, for serving or for tests without a socket.
    pub fn router(&self) -> Router {
        let own = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            // A token request is a few hundred bytes.
            .route("/v1/tokens", post(issue_token).layer(DefaultBodyLimit::max(4_096)))
            .route("/v1/session", get(open_session))
            .with_state(Arc::clone(&self.state));
        match &self.routes {
            Some(routes) => own.merge(routes.clone()),
            None => own,
        }
    }

    /// Listens on `address`, over TLS when `tls` is given. Plain ws is
    /// accepted on loopback addresses only.
    pub async fn bind(self, address: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Result<RunningGateway, ServeError> {
        if tls.is_none() && !address.ip().is_loopback() {
            return Err(ServeError::PlainTextNotLoopback { address });
        }
        let listener = TcpListener::bind(address).await.map_err(|source| ServeError::Bind { address, source })?;
        let local = listener.local_addr().map_err(|source| ServeError::Bind { address, source })?;
        if tls.is_some() {
            tracing::info!(address = %local, "gateway listening with TLS");
        } else {
            tracing::warn!(address = %local, "gateway listening WITHOUT TLS (plain ws, allowed on loopback only)");
        }

        let router = self.router();
        let state = Arc::clone(&self.state);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&state), router));
        Ok(RunningGateway { address: local, state, task })
    }
}

/// A gateway that is listening.
pub struct RunningGateway {
    address: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningGateway").field("address", &self.address).finish_non_exhaustive()
    }
}

impl RunningGateway {
    /// Returns the address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Returns the process's metrics.
    pub fn metrics(&self) -> Arc<GatewayMetrics> {
        Arc::clone(&self.state.metrics)
    }

    /// Returns the number of sessions whose tasks still run.
    pub fn running_sessions(&self) -> usize {
        self.state.sessions.len()
    }

    /// Stops accepting, closes every session with 1001, and waits up to the
    /// drain timeout; returns whether every session ended in time.
    pub async fn shutdown(self) -> bool {
        tracing::info!("gateway shutting down");
        self.state.draining.store(true, Ordering::SeqCst);
        self.state.services.shutdown.cancel();
        let _ = self.task.await;
        self.state.sessions.close();
        let drained = tokio::time::timeout(self.state.settings.drain_timeout, self.state.sessions.wait()).await.is_ok();
        if !drained {
            tracing::error!(remaining = self.state.sessions.len(), "sessions did not end within the drain timeout");
        }
        tracing::info!(drained, "gateway stopped");
        drained
    }
}

/// The address of the client of a request, for logs.
#[derive(Debug, Clone, Copy)]
struct PeerAddr(SocketAddr);

async fn accept_loop(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, state: Shared, router: Router) {
    let connections = Arc::new(Semaphore::new(state.settings.max_connections));
    let shutdown = state.services.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Running out of file descriptors is the usual cause; pausing
                // lets sessions end and free some.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            state.metrics.rejected("too_many_connections");
            tracing::warn!(%peer, limit = state.settings.max_connections, "connection limit reached; closing a new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = Arc::clone(&state);
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            state.metrics.connection_opened();
            match tls {
                Some(acceptor) => match tokio::time::timeout(state.settings.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => serve_http(stream, peer, &state, router).await,
                    Ok(Err(error)) => {
                        state.metrics.rejected("tls_handshake_failed");
                        tracing::debug!(%peer, %error, "TLS handshake failed");
                    }
                    Err(_) => {
                        state.metrics.rejected("handshake_timeout");
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                },
                None => serve_http(tcp, peer, &state, router).await,
            }
            state.metrics.connection_closed();
        });
    }
}

async fn serve_http<I>(io: I, peer: SocketAddr, state: &Shared, router: Router)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(PeerAddr(peer));
        router.clone().oneshot(request.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(state.settings.handshake_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "HTTP connection ended with an error");
            }
        }
        () = state.services.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(state.settings.handshake_timeout, connection).await;
        }
    }
}

/// The JSON body of every rejection.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A rejection's code and message.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable label, such as `token_expired`.
    pub code: String,
    /// The problem and the fix.
    pub message: String,
}

/// Logs and counts a rejection and builds its response.
fn reject(state: &State_, status: StatusCode, reason: &'static str, tenant: &str, message: String) -> Response {
    state.metrics.rejected(reason);
    tracing::warn!(status = status.as_u16(), reason, tenant, %message, "request rejected");
    let body = ErrorBody { error: ErrorDetail { code: reason.to_owned(), message } };
    (status, axum::Json(body)).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Shared>) -> Response {
    if state.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    match state.directory.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(error) => {
            tracing::warn!(%error, "not ready: the tenant directory does not respond");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response()
        }
    }
}

async fn metrics(State(state): State<Shared>) -> Response {
    let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, content_type)], state.metrics.render()).into_response()
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The user the session is for.
    pub user: UserId,
    /// The widest tier the token allows; the tenant's tier when omitted.
    #[serde(default)]
    pub tier: Option<PrivacyTier>,
    /// The token's lifetime in seconds; the server default when omitted.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// The response of `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The session token, to present when opening the WebSocket.
    pub token: String,
    /// Its expiry, Unix seconds.
    pub expires_at: u64,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The widest tier it allows.
    pub tier: PrivacyTier,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

async fn issue_token(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(key) = bearer(&headers) else {
        return reject(&state, StatusCode::UNAUTHORIZED, "api_key_missing", "unknown", "send the API key as `Authorization: Bearer <key>`".to_owned());
    };
    let key = Secret::new(key);
    let tenant = match state.directory.authenticate(&key).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return reject(&state, StatusCode::UNAUTHORIZED, "api_key_invalid", "unknown", "the API key is not valid".to_owned()),
        Err(error) => return reject(&state, StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable", "unknown", error.to_string()),
    };

    let mut deserializer = serde_json::Deserializer::from_slice(&body);
    let request: TokenRequest = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(request) => request,
        Err(error) => {
            let field = error.path().to_string();
            let message = format!("invalid token request at {field}: {}", error.into_inner());
            return reject(&state, StatusCode::BAD_REQUEST, "invalid_token_request", tenant.id(), message);
        }
    };

    let tier = request.tier.unwrap_or(tenant.max_tier);
    if tier > tenant.max_tier {
        let message = format!("tier {tier} is wider than the tenant's tier {}", tenant.max_tier);
        return reject(&state, StatusCode::FORBIDDEN, "tier_not_allowed", tenant.id(), message);
    }
    let ttl = request.ttl_seconds.map_or(state.settings.token_ttl, Duration::from_secs);
    if ttl.is_zero() || ttl > state.settings.max_token_ttl {
        let message = format!("ttl_seconds must be between 1 and {}", state.settings.max_token_ttl.as_secs());
        return reject(&state, StatusCode::BAD_REQUEST, "invalid_token_request", tenant.id(), message);
    }

    let now = unix_now();
    let claims = Claims { v: TOKEN_VERSION, tenant: tenant.id().to_owned(), user: request.user, tier, iat: now, exp: now + ttl.as_secs() };
    let token = state.signer.issue(&claims);
    tracing::info!(tenant = tenant.id(), user = %claims.user, %tier, ttl_seconds = ttl.as_secs(), "token issued");
    let response = TokenResponse { token: token.expose().to_owned(), expires_at: claims.exp, tenant: claims.tenant, tier };
    axum::Json(response).into_response()
}

/// Reads the session token from `Authorization: Bearer` or, for browsers,
/// which cannot set headers on a WebSocket, from the `access_token` query parameter.
fn session_token(request: &Request) -> Option<String> {
    if let Some(token) = bearer(request.headers()) {
        return Some(token.to_owned());
    }
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| pair.strip_prefix("access_token=")).map(str::to_owned)
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

async fn open_session(State(state): State<Shared>, mut request: Request) -> Response {
    let peer = request.extensions().get::<PeerAddr>().map(|peer| peer.0.to_string()).unwrap_or_default();
    if state.draining.load(Ordering::SeqCst) {
        return reject(&state, StatusCode::SERVICE_UNAVAILABLE, "draining", "unknown", "the server is shutting down; connect again".to_owned());
    }

    // A WebSocket upgrade (RFC 6455 section 4.2.1).
    let headers = request.headers();
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let upgrade_ok = header_has_token(headers, header::CONNECTION, "upgrade") && header_has_token(headers, header::UPGRADE, "websocket");
    let Some(key) = key.filter(|_| upgrade_ok) else {
        return reject(&state, StatusCode::BAD_REQUEST, "not_websocket", "unknown", "this endpoint takes a WebSocket upgrade request".to_owned());
    };
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|value| value.to_str().ok()) != Some("13") {
        return reject(&state, StatusCode::UPGRADE_REQUIRED, "websocket_version", "unknown", "use WebSocket version 13".to_owned());
    }

    // The token: present, signed by us, unexpired.
    let Some(token) = session_token(&request) else {
        return reject(&state, StatusCode::UNAUTHORIZED, "token_missing", "unknown", "send a session token from POST /v1/tokens".to_owned());
    };
    let claims = match state.signer.verify(&token, unix_now()) {
        Ok(claims) => claims,
        Err(error) => return reject(&state, StatusCode::UNAUTHORIZED, error.reason(), &error.tenant_for_log(), error.to_string()),
    };
    drop(token);

    // The tenant still exists, and a browser comes from an allowed origin.
    let tenant = match state.directory.tenant(&claims.tenant).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => return reject(&state, StatusCode::UNAUTHORIZED, "tenant_unknown", &claims.tenant, "the token's tenant no longer exists".to_owned()),
        Err(error) => return reject(&state, StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable", &claims.tenant, error.to_string()),
    };
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !tenant.allows_origin(origin) {
            let message = format!("origin {origin:?} is not allowed for this tenant");
            return reject(&state, StatusCode::FORBIDDEN, "origin_not_allowed", tenant.id(), message);
        }
    }

    // Room on this server and within the tenant's limits.
    let max_sessions = state.settings.max_sessions;
    let tenant_most = max_sessions - reserved_slots(max_sessions);
    let Some(tenant_slot) = TenantSlot::acquire(&state.tenant_slots, tenant.id(), tenant_most) else {
        let message = format!(
            "this tenant holds {tenant_most} of this server's {max_sessions} session slots, the most one tenant may; the rest are kept for other tenants, so retry later or on another server"
        );
        return reject(&state, StatusCode::SERVICE_UNAVAILABLE, "server_tenant_share", tenant.id(), message);
    };
    let Ok(slot) = Arc::clone(&state.session_slots).try_acquire_owned() else {
        let message = format!("the server runs its maximum of {} sessions; retry later", state.settings.max_sessions);
        return reject(&state, StatusCode::SERVICE_UNAVAILABLE, "server_full", tenant.id(), message);
    };
    let (id, numeric_id) = new_session_id();
    let lease = match SessionLease::acquire(Arc::clone(&state.limits), tenant.id(), &id, &tenant.limits).await {
        Ok(lease) => lease,
        Err(LimitError::Exceeded(exceeded)) => {
            let retry_after = exceeded.retry_after();
            let mut response = reject(&state, StatusCode::TOO_MANY_REQUESTS, exceeded.reason(), tenant.id(), exceeded.to_string());
            if let Some(retry_after) = retry_after {
                let seconds = retry_after.as_secs().max(1).to_string();
                if let Ok(value) = HeaderValue::from_str(&seconds) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
            }
            return response;
        }
        Err(LimitError::Unavailable(reason)) => return reject(&state, StatusCode::SERVICE_UNAVAILABLE, "limits_unavailable", tenant.id(), reason),
    };

    let Some(on_upgrade) = request.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return reject(&state, StatusCode::INTERNAL_SERVER_ERROR, "not_upgradable", tenant.id(), "this connection cannot be upgraded".to_owned());
    };

    // The socket is served on its own task once the 101 response is out.
    let limit = tenant.limits.max_message_bytes;
    let context = SessionContext { tenant, claims, id, numeric_id, lease };
    let services = state.services.clone();
    state.sessions.spawn(async move {
        let _slot = (slot, tenant_slot);
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::warn!(%peer, session = %context.id, %error, "the WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit))
            // Small buffers: a session's socket carries 20 ms frames of a few hundred bytes.
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024);
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        run_session(ws, context, services).await;
    });

    let accept = derive_accept_key(key.as_bytes());
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}
