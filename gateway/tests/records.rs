//! The privacy records HTTP API, against the SQLite and the PostgreSQL
//! store: consent, export and deletion, authentication, and tenant
//! isolation for every endpoint. Requests go to the router directly, without
//! a socket.

mod store_support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use mentis_gateway::records::{ConsentResponse, DeletionResponse, router};
use mentis_gateway::store::{
    ConsentRecord, ConsentScope, SessionId, Store, Tenant, Timestamp, UserExport, UserId, generate_api_key,
};
use mentis_pipeline::PrivacyTier;
use serde_json::Value;
use store_support::{Backend, DAY, tenant};
use tower::ServiceExt as _;

/// A tenant and the API key that authenticates it.
struct Client {
    tenant: Tenant,
    key: String,
    app: axum::Router,
}

impl Client {
    async fn new(backend: &Backend, label: &str) -> Client {
        let tenant = tenant(label, DAY, DAY);
        backend.store.create_tenant(&tenant).await.expect("create tenant");
        let key = generate_api_key().expect("generate key");
        backend.store.add_api_key(&tenant.id, &key.hash, label).await.expect("add key");
        Client { tenant, key: key.key.expose().to_owned(), app: router(Arc::clone(&backend.store)) }
    }

    async fn send(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        send(&self.app, method, path, Some(&format!("Bearer {}", self.key)), body).await
    }
}

async fn send(
    app: &axum::Router,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request.body(Body::from(body.unwrap_or_default().to_owned())).expect("build request");
    let response = app.clone().oneshot(request).await.expect("router answers");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("read body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// Stores a session with a transcript for `user` of `tenant`, with consent.
async fn seed_user(store: &Arc<dyn Store>, tenant: &Tenant, user: &str, text: &str) {
    let user = UserId::new(user).expect("valid user");
    let session = SessionId::new(format!("{user}-s1")).expect("valid session");
    let both = ConsentScope { transcripts: true, audio: true };
    store.record_consent(&tenant.id, &user, both, Timestamp::now()).await.expect("grant");
    store.start_session(&tenant.id, &user, &session, PrivacyTier::OnDevice, Timestamp::now()).await.expect("start");
    store.store_transcript(&tenant.id, &session, text, Timestamp::now()).await.expect("store");
}

macro_rules! both_stores {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let backend = crate::store_support::sqlite_backend().await;
                    crate::$check(&backend).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    let Some(backend) = crate::store_support::postgres_backend().await else {
                        return;
                    };
                    crate::$check(&backend).await;
                }
            )*
        }
    };
}

both_stores!(consent_set_get_withdraw, export_and_delete, authentication_required, invalid_requests, tenant_isolation_every_endpoint);

async fn consent_set_get_withdraw(backend: &Backend) {
    let client = Client::new(backend, "api-consent").await;

    let (status, body) = client.send(Method::GET, "/v1/users/nora/consent", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let consent: ConsentResponse = serde_json::from_value(body).expect("consent response");
    assert_eq!(consent.current, ConsentScope::NONE);
    assert!(consent.history.is_empty());

    let (status, body) =
        client.send(Method::PUT, "/v1/users/nora/consent", Some(r#"{"transcripts": true, "audio": false}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let record: ConsentRecord = serde_json::from_value(body).expect("consent record");
    assert_eq!(record.scope, ConsentScope { transcripts: true, audio: false });

    let (status, body) = client.send(Method::DELETE, "/v1/users/nora/consent", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = client.send(Method::GET, "/v1/users/nora/consent", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let consent: ConsentResponse = serde_json::from_value(body).expect("consent response");
    assert_eq!(consent.current, ConsentScope::NONE);
    let scopes: Vec<ConsentScope> = consent.history.iter().map(|record| record.scope).collect();
    assert_eq!(scopes, [ConsentScope { transcripts: true, audio: false }, ConsentScope::NONE]);

    // The withdrawal reached the store: a transcript is no longer stored.
    let user = UserId::new("nora").expect("valid user");
    assert_eq!(backend.store.current_consent(&client.tenant.id, &user).await.expect("consent"), ConsentScope::NONE);
}

async fn export_and_delete(backend: &Backend) {
    let client = Client::new(backend, "api-export").await;
    seed_user(&backend.store, &client.tenant, "omar", "what omar said").await;
    seed_user(&backend.store, &client.tenant, "pia", "what pia said").await;

    let (status, body) = client.send(Method::GET, "/v1/users/omar/export", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let export: UserExport = serde_json::from_value(body).expect("export");
    assert_eq!(export.user_id.as_str(), "omar");
    assert_eq!(export.sessions.len(), 1);
    assert_eq!(export.consent_history.len(), 1);
    let texts: Vec<&str> = export.transcripts.iter().map(|record| record.text.as_str()).collect();
    assert_eq!(texts, ["what omar said"]);

    let (status, body) = client.send(Method::DELETE, "/v1/users/omar", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deletion: DeletionResponse = serde_json::from_value(body).expect("deletion response");
    assert_eq!((deletion.deleted.sessions, deletion.deleted.transcripts), (1, 1));

    let (status, body) = client.send(Method::GET, "/v1/users/omar/export", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = client.send(Method::DELETE, "/v1/users/omar", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for table in ["users", "consents", "sessions", "transcripts"] {
        assert_eq!(backend.raw.count(table, &client.tenant.id, Some("omar")).await, 0, "{table}");
    }
    assert_eq!(backend.raw.count("transcripts", &client.tenant.id, Some("pia")).await, 1);
    assert_eq!(backend.raw.count("audit_log", &client.tenant.id, None).await, 1);
}

async fn authentication_required(backend: &Backend) {
    let client = Client::new(backend, "api-auth").await;
    seed_user(&backend.store, &client.tenant, "quinn", "secret words").await;
    let endpoints = [
        (Method::GET, "/v1/users/quinn/consent", None),
        (Method::PUT, "/v1/users/quinn/consent", Some(r#"{"transcripts": true, "audio": true}"#)),
        (Method::DELETE, "/v1/users/quinn/consent", None),
        (Method::GET, "/v1/users/quinn/export", None),
        (Method::DELETE, "/v1/users/quinn", None),
    ];
    let forged = generate_api_key().expect("generate key");
    let wrong_key = format!("Bearer {}", forged.key.expose());
    let raw_key = client.key.clone();
    let basic = format!("Basic {}", client.key);
    for (method, path, body) in endpoints {
        for authorization in [None, Some(wrong_key.as_str()), Some(raw_key.as_str()), Some(basic.as_str()), Some("Bearer ")] {
            let (status, answer) = send(&client.app, method.clone(), path, authorization, body).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {authorization:?}: {answer}");
            assert!(answer["error"].is_string(), "{answer}");
        }
    }
    // Nothing changed.
    assert_eq!(backend.raw.count("consents", &client.tenant.id, Some("quinn")).await, 1);
    assert_eq!(backend.raw.count("transcripts", &client.tenant.id, Some("quinn")).await, 1);
}

async fn invalid_requests(backend: &Backend) {
    let client = Client::new(backend, "api-invalid").await;
    // axum's JSON extractor returns 422 for a well-formed body of the wrong
    // shape and 400 for a body that is not JSON.
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let cases = [
        (Method::PUT, "/v1/users/rae/consent", Some(r#"{"transcripts": true}"#), unprocessable),
        (Method::PUT, "/v1/users/rae/consent", Some(r#"{"transcripts": true, "audio": "yes"}"#), unprocessable),
        (Method::PUT, "/v1/users/rae/consent", Some(r#"{"transcripts": true, "audio": true, "video": true}"#), unprocessable),
        (Method::PUT, "/v1/users/rae/consent", Some("not json"), StatusCode::BAD_REQUEST),
        (Method::GET, "/v1/users/bad%20id/consent", None, StatusCode::BAD_REQUEST),
        (Method::GET, "/v1/users/bad;id/export", None, StatusCode::BAD_REQUEST),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = client.send(method.clone(), path, body).await;
        assert_eq!(status, expected, "{method} {path} {body:?}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (_, answer) = client.send(Method::PUT, "/v1/users/rae/consent", Some(r#"{"transcripts": true}"#)).await;
    assert!(answer["error"].as_str().is_some_and(|message| message.contains("audio")), "{answer}");

    let oversized = format!(r#"{{"transcripts": true, "audio": true, "pad": "{}"}}"#, "x".repeat(8192));
    let (status, answer) = client.send(Method::PUT, "/v1/users/rae/consent", Some(&oversized)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(backend.raw.count("consents", &client.tenant.id, None).await, 0);
}

/// Tenant B's key, aimed at user ids that exist in tenant A, never reads,
/// changes, exports or deletes A's data.
async fn tenant_isolation_every_endpoint(backend: &Backend) {
    let a = Client::new(backend, "api-iso-a").await;
    let b = Client::new(backend, "api-iso-b").await;
    seed_user(&backend.store, &a.tenant, "sam", "only for tenant a").await;
    let count_a = |table: &'static str| backend.raw.count(table, &a.tenant.id, Some("sam"));

    // Read consent: B gets no record for sam.
    let (status, body) = b.send(Method::GET, "/v1/users/sam/consent", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let consent: ConsentResponse = serde_json::from_value(body).expect("consent response");
    assert_eq!(consent.current, ConsentScope::NONE);
    assert!(consent.history.is_empty());

    // Export and delete: B has no user sam.
    let (status, body) = b.send(Method::GET, "/v1/users/sam/export", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(!body.to_string().contains("only for tenant a"), "{body}");
    let (status, body) = b.send(Method::DELETE, "/v1/users/sam", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Set and withdraw consent: B's records go to B's own user sam.
    let (status, body) =
        b.send(Method::PUT, "/v1/users/sam/consent", Some(r#"{"transcripts": false, "audio": false}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b.send(Method::DELETE, "/v1/users/sam/consent", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A's data is untouched, and A's consent still allows storage.
    assert_eq!(count_a("consents").await, 1);
    assert_eq!(count_a("sessions").await, 1);
    assert_eq!(count_a("transcripts").await, 1);
    let (status, body) = a.send(Method::GET, "/v1/users/sam/consent", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let consent: ConsentResponse = serde_json::from_value(body).expect("consent response");
    assert_eq!(consent.current, ConsentScope { transcripts: true, audio: true });
    assert_eq!(consent.history.len(), 1);
    let (status, body) = a.send(Method::GET, "/v1/users/sam/export", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.to_string().contains("only for tenant a"), "{body}");

    // B's deletion of its own sam leaves A's sam alone.
    let (status, body) = b.send(Method::DELETE, "/v1/users/sam", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(count_a("transcripts").await, 1);
    assert_eq!(count_a("users").await, 1);
    assert_eq!(backend.raw.count("audit_log", &a.tenant.id, None).await, 0);
}
