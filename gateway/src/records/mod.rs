//! The privacy records HTTP API: consent, export and deletion per user, for
//! the tenant that the bearer API key belongs to.
//!
//! | Method and path | Does |
//! |---|---|
//! | `GET /v1/users/{user_id}/consent` | current consent and its history |
//! | `PUT /v1/users/{user_id}/consent` | records consent, body `{"transcripts": bool, "audio": bool}` |
//! | `DELETE /v1/users/{user_id}/consent` | withdraws consent (records an empty scope) |
//! | `GET /v1/users/{user_id}/export` | everything stored about the user, as JSON |
//! | `DELETE /v1/users/{user_id}` | deletes everything about the user, leaving an audit entry |
//!
//! Every request needs `Authorization: Bearer <API key>`. The tenant comes
//! from the key alone, so a key can only ever reach its own tenant's users:
//! another tenant's user id is simply a user this tenant does not have.
//! Errors are JSON objects `{"error": "..."}` with status 400 (invalid
//! input), 401 (missing or unknown key), 404 (no such user), 503 (database
//! unavailable) or 500.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use mentis_pipeline::Secret;
use serde::{Deserialize, Serialize};

use crate::store::{
    ConsentRecord, ConsentScope, DeletedCounts, Store, StoreError, TenantId, Timestamp, UserExport, UserId,
};

/// Largest request body accepted, in bytes. The only body is a consent
/// scope of two booleans.
pub const MAX_BODY_BYTES: usize = 4096;

/// Maps a bearer API key to its tenant.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Returns the tenant of `key`, or `None` for an unknown or revoked key.
    async fn tenant_for_key(&self, key: &Secret) -> Result<Option<TenantId>, StoreError>;
}

/// Authenticates API keys through [`Store::authenticate`].
#[derive(Debug, Clone)]
pub struct StoreAuthenticator(pub Arc<dyn Store>);

#[async_trait]
impl Authenticator for StoreAuthenticator {
    async fn tenant_for_key(&self, key: &Secret) -> Result<Option<TenantId>, StoreError> {
        Ok(self.0.authenticate(key).await?.map(|tenant| tenant.id))
    }
}

#[derive(Clone)]
struct RecordsState {
    store: Arc<dyn Store>,
    authenticator: Arc<dyn Authenticator>,
}

/// Builds the records API, authenticating keys through the store itself.
pub fn router(store: Arc<dyn Store>) -> axum::Router {
    let authenticator = Arc::new(StoreAuthenticator(Arc::clone(&store)));
    router_with_authenticator(store, authenticator)
}

/// Builds the records API with another way of mapping keys to tenants.
pub fn router_with_authenticator(store: Arc<dyn Store>, authenticator: Arc<dyn Authenticator>) -> axum::Router {
    axum::Router::new()
        .route("/v1/users/{user_id}/consent", get(get_consent).put(put_consent).delete(withdraw_consent))
        .route("/v1/users/{user_id}/export", get(export_user))
        .route("/v1/users/{user_id}", delete(delete_user))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(RecordsState { store, authenticator })
}

/// An error response: a status and a JSON body `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match &error {
            StoreError::InvalidId { .. }
            | StoreError::InvalidAudioFormat { .. }
            | StoreError::TooLarge { .. }
            | StoreError::InvalidTenant { .. } => ApiError::new(StatusCode::BAD_REQUEST, error.to_string()),
            StoreError::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
            StoreError::AlreadyExists { .. } => ApiError::new(StatusCode::CONFLICT, error.to_string()),
            _ if error.is_retryable() => {
                tracing::warn!(%error, "records request failed: database unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable; retry later")
            }
            _ => {
                tracing::error!(%error, "records request failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the gateway log")
            }
        }
    }
}

/// The tenant of the request's bearer API key.
struct AuthenticatedTenant(TenantId);

impl FromRequestParts<RecordsState> for AuthenticatedTenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &RecordsState) -> Result<Self, ApiError> {
        let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized("missing Authorization header; send `Authorization: Bearer <API key>`"));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .ok_or_else(|| unauthorized("malformed Authorization header; send `Authorization: Bearer <API key>`"))?;
        let key = Secret::new(key);

        match state.authenticator.tenant_for_key(&key).await? {
            Some(tenant) => Ok(AuthenticatedTenant(tenant)),
            None => {
                tracing::info!(method = %parts.method, "records request rejected: unknown or revoked API key");
                Err(unauthorized("unknown or revoked API key"))
            }
        }
    }
}

fn parse_user(user_id: String) -> Result<UserId, ApiError> {
    Ok(UserId::new(user_id)?)
}

/// The consent of one user: the current scope and every record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentResponse {
    /// The user.
    pub user_id: UserId,
    /// The scope of the latest record, or nothing when there is none.
    pub current: ConsentScope,
    /// Every consent record, oldest first.
    pub history: Vec<ConsentRecord>,
}

/// The body of `PUT /v1/users/{user_id}/consent`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentRequest {
    transcripts: bool,
    audio: bool,
}

/// The response of `DELETE /v1/users/{user_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionResponse {
    /// The deleted user.
    pub user_id: UserId,
    /// Row counts of the deleted records.
    pub deleted: DeletedCounts,
}

async fn get_consent(
    State(state): State<RecordsState>,
    AuthenticatedTenant(tenant): AuthenticatedTenant,
    Path(user_id): Path<String>,
) -> Result<Json<ConsentResponse>, ApiError> {
    let user = parse_user(user_id)?;
    let history = state.store.consent_history(&tenant, &user).await?;
    let current = history.last().map_or(ConsentScope::NONE, |record| record.scope);
    Ok(Json(ConsentResponse { user_id: user, current, history }))
}

async fn put_consent(
    State(state): State<RecordsState>,
    AuthenticatedTenant(tenant): AuthenticatedTenant,
    Path(user_id): Path<String>,
    body: Result<Json<ConsentRequest>, JsonRejection>,
) -> Result<Json<ConsentRecord>, ApiError> {
    let user = parse_user(user_id)?;
    // The rejection's own status separates a malformed body (400, 415, 422)
    // from an oversized one (413).
    let Json(request) = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            format!("invalid consent body: {}; send {{\"transcripts\": bool, \"audio\": bool}}", rejection.body_text()),
        )
    })?;
    let scope = ConsentScope { transcripts: request.transcripts, audio: request.audio };
    let record = state.store.record_consent(&tenant, &user, scope, Timestamp::now()).await?;
    tracing::info!(tenant = %tenant, transcripts = scope.transcripts, audio = scope.audio, "consent recorded");
    Ok(Json(record))
}

async fn withdraw_consent(
    State(state): State<RecordsState>,
    AuthenticatedTenant(tenant): AuthenticatedTenant,
    Path(user_id): Path<String>,
) -> Result<Json<ConsentRecord>, ApiError> {
    let user = parse_user(user_id)?;
    let record = state.store.record_consent(&tenant, &user, ConsentScope::NONE, Timestamp::now()).await?;
    tracing::info!(tenant = %tenant, "consent withdrawn");
    Ok(Json(record))
}

async fn export_user(
    State(state): State<RecordsState>,
    AuthenticatedTenant(tenant): AuthenticatedTenant,
    Path(user_id): Path<String>,
) -> Result<Json<UserExport>, ApiError> {
    let user = parse_user(user_id)?;
    let export = state.store.export_user(&tenant, &user, Timestamp::now()).await?;
    tracing::info!(tenant = %tenant, "user data exported");
    Ok(Json(export))
}

async fn delete_user(
    State(state): State<RecordsState>,
    AuthenticatedTenant(tenant): AuthenticatedTenant,
    Path(user_id): Path<String>,
) -> Result<Json<DeletionResponse>, ApiError> {
    let user = parse_user(user_id)?;
    let deleted = state.store.delete_user(&tenant, &user, Timestamp::now()).await?;
    tracing::info!(tenant = %tenant, ?deleted, "user data deleted");
    Ok(Json(DeletionResponse { user_id: user, deleted }))
}

/// Runs [`Store::purge_expired`] every `interval` until `shutdown` is
/// cancelled, logging what each run deleted. A failed run is logged and
/// retried at the next interval.
pub async fn run_purge_job(
    store: Arc<dyn Store>,
    interval: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match store.purge_expired(Timestamp::now()).await {
            Ok(summary) if summary.transcripts + summary.audio > 0 => tracing::info!(
                tenants = summary.tenants,
                transcripts = summary.transcripts,
                audio = summary.audio,
                "retention purge deleted expired data"
            ),
            Ok(_) => tracing::debug!("retention purge found nothing expired"),
            Err(error) => tracing::warn!(%error, "retention purge failed; retrying at the next interval"),
        }
    }
}
