//! The store conformance suite: every check runs against the SQLite store and
//! the PostgreSQL store. Deletions are verified by querying the tables
//! directly, not through the store.
//!
//! PostgreSQL tests need `eval "$(scripts/services)"` first; see
//! `store_support` for how a missing database is reported.

mod store_support;

use std::time::Duration;

use mentis_gateway::store::{
    ApiKeyHash, AuditAction, ConsentScope, SessionId, StoreError, StoreOutcome, Tenant, TenantId, Timestamp,
    UserExport, UserId, generate_api_key,
};
use mentis_pipeline::{PrivacyTier, Secret};
use store_support::{Backend, DAY, tenant};

const T0: Timestamp = Timestamp(1_700_000_000_000);
const BOTH: ConsentScope = ConsentScope { transcripts: true, audio: true };
const TRANSCRIPTS_ONLY: ConsentScope = ConsentScope { transcripts: true, audio: false };

fn user(id: &str) -> UserId {
    UserId::new(id).expect("valid user id")
}

fn session(id: &str) -> SessionId {
    SessionId::new(id).expect("valid session id")
}

async fn new_tenant(backend: &Backend, label: &str) -> Tenant {
    let tenant = tenant(label, DAY, DAY);
    backend.store.create_tenant(&tenant).await.expect("create tenant");
    tenant
}

/// Runs each listed check against both stores.
macro_rules! conformance {
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

conformance!(
    tenant_round_trip,
    api_key_authentication,
    consent_latest_record_wins,
    storage_requires_consent,
    withdrawal_stops_storage,
    unknown_session_rejected,
    export_contains_everything,
    deletion_removes_user_data,
    deletion_of_unknown_user,
    purge_deletes_expired_data,
    tenants_see_only_own_data,
    oversized_content_rejected,
);

async fn tenant_round_trip(backend: &Backend) {
    let store = &backend.store;
    let mut tenant = tenant("round-trip", Duration::from_secs(3600), Duration::from_secs(600));
    tenant.max_tier = PrivacyTier::Cloud;
    tenant.limits.max_concurrent_sessions = 7;
    tenant.limits.max_audio_seconds_per_day = 123_456;
    store.create_tenant(&tenant).await.expect("create tenant");

    assert_eq!(store.tenant(&tenant.id).await.expect("read tenant"), tenant);
    assert!(store.tenants().await.expect("list tenants").contains(&tenant));

    let duplicate = store.create_tenant(&tenant).await;
    assert!(matches!(duplicate, Err(StoreError::AlreadyExists { what: "tenant", .. })), "{duplicate:?}");

    let missing = store.tenant(&TenantId::new("no-such-tenant-x").expect("valid id")).await;
    assert!(matches!(missing, Err(StoreError::NotFound { what: "tenant", .. })), "{missing:?}");
}

async fn api_key_authentication(backend: &Backend) {
    let store = &backend.store;
    let tenant = new_tenant(backend, "keys").await;
    let key = generate_api_key().expect("generate key");
    store.add_api_key(&tenant.id, &key.hash, "test key").await.expect("add key");

    let found = store.authenticate(&key.key).await.expect("authenticate");
    assert_eq!(found.map(|tenant| tenant.id), Some(tenant.id.clone()));

    // A key that differs in its last character is unknown.
    let mut wrong = key.key.expose().to_owned();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(wrong.len() - 1.., last);
    assert_eq!(store.authenticate(&Secret::new(wrong)).await.expect("authenticate"), None);

    // The store keeps the digest only.
    assert_eq!(key.hash, ApiKeyHash::of(key.key.expose()));
    assert_eq!(backend.raw.count("api_keys", &tenant.id, None).await, 1);

    assert!(store.revoke_api_key(&tenant.id, &key.hash).await.expect("revoke"));
    assert_eq!(store.authenticate(&key.key).await.expect("authenticate"), None);
    assert!(!store.revoke_api_key(&tenant.id, &key.hash).await.expect("revoke again"));
}

async fn consent_latest_record_wins(backend: &Backend) {
    let store = &backend.store;
    let tenant = new_tenant(backend, "consent").await;
    let alice = user("alice");

    assert_eq!(store.current_consent(&tenant.id, &alice).await.expect("consent"), ConsentScope::NONE);

    store.record_consent(&tenant.id, &alice, BOTH, T0).await.expect("grant");
    assert_eq!(store.current_consent(&tenant.id, &alice).await.expect("consent"), BOTH);

    // Same timestamp as the grant: the later record still wins.
    store.record_consent(&tenant.id, &alice, TRANSCRIPTS_ONLY, T0).await.expect("narrow");
    assert_eq!(store.current_consent(&tenant.id, &alice).await.expect("consent"), TRANSCRIPTS_ONLY);

    store.record_consent(&tenant.id, &alice, ConsentScope::NONE, Timestamp(T0.0 + 1)).await.expect("withdraw");
    let history = store.consent_history(&tenant.id, &alice).await.expect("history");
    let scopes: Vec<ConsentScope> = history.iter().map(|record| record.scope).collect();
    assert_eq!(scopes, [BOTH, TRANSCRIPTS_ONLY, ConsentScope::NONE]);
    assert_eq!(history[2].recorded_at, Timestamp(T0.0 + 1));
    assert_eq!(store.current_consent(&tenant.id, &alice).await.expect("consent"), ConsentScope::NONE);
}

async fn storage_requires_consent(backend: &Backend) {
    let store = &backend.store;
    let tenant = new_tenant(backend, "requires").await;
    let bob = user("bob");
    let s1 = session("s1");
    store.start_session(&tenant.id, &bob, &s1, PrivacyTier::OnDevice, T0).await.expect("start session");

    // No consent record: nothing is stored.
    let outcome = store.store_transcript(&tenant.id, &s1, "hello", T0).await.expect("store transcript");
    assert_eq!(outcome, StoreOutcome::NotConsented);
    let outcome = store.store_audio(&tenant.id, &s1, "pcm16/16000/1", &[1, 2, 3, 4], T0).await.expect("store audio");
    assert_eq!(outcome, StoreOutcome::NotConsented);

    // Transcripts only: the transcript is stored, the audio is not.
    store.record_consent(&tenant.id, &bob, TRANSCRIPTS_ONLY, T0).await.expect("grant");
    let outcome = store.store_transcript(&tenant.id, &s1, "hello", T0).await.expect("store transcript");
    assert_eq!(outcome, StoreOutcome::Stored);
    let outcome = store.store_audio(&tenant.id, &s1, "pcm16/16000/1", &[1, 2, 3, 4], T0).await.expect("store audio");
    assert_eq!(outcome, StoreOutcome::NotConsented);

    assert_eq!(backend.raw.count("transcripts", &tenant.id, Some("bob")).await, 1);
    assert_eq!(backend.raw.count("audio", &tenant.id, Some("bob")).await, 0);
}

async fn withdrawal_stops_storage(backend: &Backend) {
    let store = &backend.store;
    let tenant = new_tenant(backend, "withdraw").await;
    let carol = user("carol");
    let s1 = session("s1");
    store.start_session(&tenant.id, &carol, &s1, PrivacyTier::OnDevice, T0).await.expect("start session");
    store.record_consent(&tenant.id, &carol, BOTH, T0).await.expect("grant");
    assert_eq!(store.store_transcript(&tenant.id, &s1, "one", T0).await.expect("store"), StoreOutcome::Stored);
    assert_eq!(store.store_audio(&tenant.id, &s1, "opus", &[9; 16], T0).await.expect("store"), StoreOutcome::Stored);

    // The very next write after the withdrawal, in the same session, is refused.
    store.record_consent(&tenant.id, &carol, ConsentScope::NONE, T0).await.expect("withdraw");
    assert_eq!(store.store_transcript(&tenant.id, &s1, "two", T0).await.expect("store"), StoreOutcome::NotConsented);
    assert_eq!(
        store.store_audio(&tenant.id, &s1, "opus", &[9; 16], T0).await.expect("store"),
        StoreOutcome::NotConsented
    );
    assert_eq!(backend.raw.count("transcripts", &tenant.id, Some("carol")).await, 1);
    assert_eq!(backend.raw.count("audio", &tenant.id, Some("carol")).await, 1);
}

async fn unknown_session_rejected(backend: &Backend) {
    let store = &backend.store;
    let tenant = new_tenant(backend, "unknown-session").await;
    let result = store.store_transcript(&tenant.id, &session("missing"), "text", T0).await;
    assert!(matches!(result, Err(StoreError::NotFound { what: "session", .. })), "{result:?}");
    let result = store.end_session(&tenant.id, &session("missing"), T0).await;
    assert!(matches!(result, Err(StoreError::NotFound { what: "session", .. })), "{result:?}");

    let dave = user("dave");
    store.start_session(&tenant.id, &dave, &session("s1"), PrivacyTier::OnDevice, T0).await.expect("start");
    let again = store.start_session(&tenant.id, &dave, &session("s1"), PrivacyTier::OnDevice, T0).await;
    assert!(matches!(again, Err(StoreError::AlreadyExists { what: "session", .. })), "{again:?}");

    let unknown_tenant = TenantId::new("no-such-tenant-y").expect("valid id");
    let result = store.record_consent(&unknown_tenant, &dave, BOTH, T0).await;
    assert!(matches!(result, Err(StoreError::NotFound { what: "tenant", .. })), "{result:?}");
}

async fn export_contains_everything(backend: &Backend) {
    let store = &backend.store;
    let tenant = new_tenant(backend, "export").await;
    let erin = user("erin");
    store.record_consent(&tenant.id, &erin, BOTH, T0).await.expect("grant");
    store.start_session(&tenant.id, &erin, &session("s1"), PrivacyTier::SelfHosted, T0).await.expect("start");
    store.store_transcript(&tenant.id, &session("s1"), "first words", Timestamp(T0.0 + 10)).await.expect("store");
    store.store_audio(&tenant.id, &session("s1"), "pcm16/16000/1", &[0, 1, 254, 255], Timestamp(T0.0 + 11)).await.expect("store");
    store.end_session(&tenant.id, &session("s1"), Timestamp(T0.0 + 20)).await.expect("end");
    store.record_consent(&tenant.id, &erin, TRANSCRIPTS_ONLY, Timestamp(T0.0 + 30)).await.expect("narrow");
    store.start_session(&tenant.id, &erin, &session("s2"), PrivacyTier::OnDevice, Timestamp(T0.0 + 40)).await.expect("start");
    store.store_transcript(&tenant.id, &session("s2"), "second words", Timestamp(T0.0 + 50)).await.expect("store");

    // Another user's data must not appear.
    let frank = user("frank");
    store.record_consent(&tenant.id, &frank, BOTH, T0).await.expect("grant");
    store.start_session(&tenant.id, &frank, &session("s3"), PrivacyTier::OnDevice, T0).await.expect("start");
    store.store_transcript(&tenant.id, &session("s3"), "not erin", T0).await.expect("store");

    let export = store.export_user(&tenant.id, &erin, Timestamp(T0.0 + 99)).await.expect("export");
    assert_eq!(export.tenant_id, tenant.id);
    assert_eq!(export.user_id, erin);
    assert_eq!(export.exported_at, Timestamp(T0.0 + 99));
    let scopes: Vec<ConsentScope> = export.consent_history.iter().map(|record| record.scope).collect();
    assert_eq!(scopes, [BOTH, TRANSCRIPTS_ONLY]);
    let sessions: Vec<&str> = export.sessions.iter().map(|record| record.session_id.as_str()).collect();
    assert_eq!(sessions, ["s1", "s2"]);
    assert_eq!(export.sessions[0].ended_at, Some(Timestamp(T0.0 + 20)));
    assert_eq!(export.sessions[0].tier, PrivacyTier::SelfHosted);
    assert_eq!(export.sessions[1].ended_at, None);
    let texts: Vec<&str> = export.transcripts.iter().map(|record| record.text.as_str()).collect();
    assert_eq!(texts, ["first words", "second words"]);
    assert_eq!(export.audio.len(), 1);
    assert_eq!(export.audio[0].data, [0, 1, 254, 255]);
    assert_eq!(export.audio[0].format, "pcm16/16000/1");

    // The JSON form keeps every field, with audio as base64.
    let json = serde_json::to_string(&export).expect("serialize export");
    assert!(json.contains("\"data_base64\":\"AAH+/w==\""), "{json}");
    let parsed: UserExport = serde_json::from_str(&json).expect("parse export");
    assert_eq!(parsed, export);
}

async fn deletion_removes_user_data(backend: &Backend) {
    let store = &backend.store;
    let tenant = new_tenant(backend, "delete").await;
    let gina = user("gina");
    let hank = user("hank");
    for (person, id) in [(&gina, "g1"), (&gina, "g2"), (&hank, "h1")] {
        store.record_consent(&tenant.id, person, BOTH, T0).await.expect("grant");
        store.start_session(&tenant.id, person, &session(id), PrivacyTier::OnDevice, T0).await.expect("start");
        store.store_transcript(&tenant.id, &session(id), "private words", T0).await.expect("store");
        store.store_audio(&tenant.id, &session(id), "opus", &[7; 32], T0).await.expect("store");
    }

    let deleted = store.delete_user(&tenant.id, &gina, Timestamp(T0.0 + 5)).await.expect("delete");
    assert_eq!(deleted.sessions, 2);
    assert_eq!(deleted.transcripts, 2);
    assert_eq!(deleted.audio, 2);
    assert_eq!(deleted.consent_records, 2);

    // Gone from every table, read directly.
    for table in ["users", "consents", "sessions", "transcripts", "audio"] {
        assert_eq!(backend.raw.count(table, &tenant.id, Some("gina")).await, 0, "rows of gina left in {table}");
        assert!(backend.raw.count(table, &tenant.id, Some("hank")).await > 0, "rows of hank lost from {table}");
    }
    let export = store.export_user(&tenant.id, &gina, T0).await;
    assert!(matches!(export, Err(StoreError::NotFound { what: "user", .. })), "{export:?}");

    // The audit log records that a deletion happened, with counts and no content.
    let log = store.audit_log(&tenant.id).await.expect("audit log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].action, AuditAction::UserDeleted);
    assert_eq!(log[0].deleted, deleted);
    assert_eq!(log[0].at, Timestamp(T0.0 + 5));
    let digest = log[0].subject_sha256.as_deref().expect("subject digest");
    assert_eq!(digest.len(), 64);
    assert!(!digest.contains("gina"));
    let json = serde_json::to_string(&log).expect("serialize log");
    assert!(!json.contains("private words"), "{json}");
    assert!(!json.contains("gina"), "{json}");
}

async fn deletion_of_unknown_user(backend: &Backend) {
    let tenant = new_tenant(backend, "delete-unknown").await;
    let result = backend.store.delete_user(&tenant.id, &user("nobody"), T0).await;
    assert!(matches!(result, Err(StoreError::NotFound { what: "user", .. })), "{result:?}");
    assert!(backend.store.audit_log(&tenant.id).await.expect("audit log").is_empty());
}

async fn purge_deletes_expired_data(backend: &Backend) {
    let store = &backend.store;
    let hour = Duration::from_secs(3600);
    let short = tenant("purge-short", hour, Duration::from_secs(600));
    let long = tenant("purge-long", 30 * DAY, 30 * DAY);
    let now = Timestamp(T0.0 + 10 * 3_600_000);
    for tenant in [&short, &long] {
        store.create_tenant(tenant).await.expect("create tenant");
        let ivy = user("ivy");
        store.record_consent(&tenant.id, &ivy, BOTH, T0).await.expect("grant");
        store.start_session(&tenant.id, &ivy, &session("s1"), PrivacyTier::OnDevice, T0).await.expect("start");
        // Two hours, thirty minutes and one minute old.
        for age_minutes in [120, 30, 1] {
            let at = now.minus(Duration::from_secs(age_minutes * 60));
            store.store_transcript(&tenant.id, &session("s1"), &format!("{age_minutes} minutes old"), at).await.expect("store");
            store.store_audio(&tenant.id, &session("s1"), "opus", &[1; 8], at).await.expect("store");
        }
    }

    let summary = store.purge_expired(now).await.expect("purge");
    // The short tenant keeps transcripts for an hour and audio for ten minutes.
    assert!(summary.transcripts >= 1, "{summary:?}");
    assert!(summary.audio >= 2, "{summary:?}");
    assert_eq!(backend.raw.count("transcripts", &short.id, None).await, 2);
    assert_eq!(backend.raw.count("audio", &short.id, None).await, 1);
    assert_eq!(backend.raw.count("transcripts", &long.id, None).await, 3);
    assert_eq!(backend.raw.count("audio", &long.id, None).await, 3);

    let export = store.export_user(&short.id, &user("ivy"), now).await.expect("export");
    let texts: Vec<&str> = export.transcripts.iter().map(|record| record.text.as_str()).collect();
    assert_eq!(texts, ["30 minutes old", "1 minutes old"]);

    let log = store.audit_log(&short.id).await.expect("audit log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].action, AuditAction::RetentionPurge);
    assert_eq!((log[0].deleted.transcripts, log[0].deleted.audio), (1, 2));
    assert_eq!(log[0].subject_sha256, None);
    assert!(store.audit_log(&long.id).await.expect("audit log").is_empty());

    // A second run finds nothing more for these tenants.
    store.purge_expired(now).await.expect("purge again");
    assert_eq!(store.audit_log(&short.id).await.expect("audit log").len(), 1);
}

async fn tenants_see_only_own_data(backend: &Backend) {
    let store = &backend.store;
    let a = new_tenant(backend, "iso-a").await;
    let b = new_tenant(backend, "iso-b").await;
    let jack = user("jack");
    store.record_consent(&a.id, &jack, BOTH, T0).await.expect("grant");
    store.start_session(&a.id, &jack, &session("s1"), PrivacyTier::OnDevice, T0).await.expect("start");
    store.store_transcript(&a.id, &session("s1"), "tenant a only", T0).await.expect("store");

    // The same user and session ids, asked through tenant B.
    assert_eq!(store.current_consent(&b.id, &jack).await.expect("consent"), ConsentScope::NONE);
    assert!(store.consent_history(&b.id, &jack).await.expect("history").is_empty());
    let export = store.export_user(&b.id, &jack, T0).await;
    assert!(matches!(export, Err(StoreError::NotFound { .. })), "{export:?}");
    let delete = store.delete_user(&b.id, &jack, T0).await;
    assert!(matches!(delete, Err(StoreError::NotFound { .. })), "{delete:?}");
    let write = store.store_transcript(&b.id, &session("s1"), "injected", T0).await;
    assert!(matches!(write, Err(StoreError::NotFound { what: "session", .. })), "{write:?}");
    let end = store.end_session(&b.id, &session("s1"), T0).await;
    assert!(matches!(end, Err(StoreError::NotFound { what: "session", .. })), "{end:?}");

    // Tenant A's data is intact, and B has a separate user of the same id.
    assert_eq!(backend.raw.count("transcripts", &a.id, Some("jack")).await, 1);
    store.record_consent(&b.id, &jack, TRANSCRIPTS_ONLY, T0).await.expect("grant in b");
    assert_eq!(store.current_consent(&a.id, &jack).await.expect("consent"), BOTH);
    assert_eq!(store.current_consent(&b.id, &jack).await.expect("consent"), TRANSCRIPTS_ONLY);
    assert!(store.audit_log(&b.id).await.expect("audit log").is_empty());
}

async fn oversized_content_rejected(backend: &Backend) {
    let store = &backend.store;
    let tenant = new_tenant(backend, "oversized").await;
    let kim = user("kim");
    store.record_consent(&tenant.id, &kim, BOTH, T0).await.expect("grant");
    store.start_session(&tenant.id, &kim, &session("s1"), PrivacyTier::OnDevice, T0).await.expect("start");

    let text = "x".repeat(mentis_gateway::store::MAX_TRANSCRIPT_BYTES + 1);
    let result = store.store_transcript(&tenant.id, &session("s1"), &text, T0).await;
    assert!(matches!(result, Err(StoreError::TooLarge { what: "transcript", .. })), "{result:?}");
    let audio = vec![0u8; mentis_gateway::store::MAX_AUDIO_BYTES + 1];
    let result = store.store_audio(&tenant.id, &session("s1"), "opus", &audio, T0).await;
    assert!(matches!(result, Err(StoreError::TooLarge { what: "audio clip", .. })), "{result:?}");
    let result = store.store_audio(&tenant.id, &session("s1"), "pcm'; DROP", &[0; 4], T0).await;
    assert!(matches!(result, Err(StoreError::InvalidAudioFormat { .. })), "{result:?}");
    assert_eq!(backend.raw.count("transcripts", &tenant.id, None).await, 0);
}

#[test]
fn ids_validated() {
    assert!(UserId::new("user-42@example.org").is_ok());
    for bad in ["", "has space", "semi;colon", "slash/", "ünïcode"] {
        let result = UserId::new(bad);
        assert!(matches!(result, Err(StoreError::InvalidId { kind: "user id", .. })), "{bad:?}: {result:?}");
    }
    assert!(TenantId::new("a".repeat(128)).is_ok());
    assert!(TenantId::new("a".repeat(129)).is_err());
    // Deserializing validates too.
    assert!(serde_json::from_str::<UserId>("\"bad id\"").is_err());
}

/// A deleted transcript leaves no copy in the SQLite file or its
/// write-ahead log (`secure_delete` and the log truncation).
#[tokio::test]
async fn sqlite_deleted_text_not_in_file() {
    let backend = store_support::sqlite_backend().await;
    let store_support::Raw::Sqlite(path) = &backend.raw else {
        unreachable!("sqlite_backend returns a SQLite backend");
    };
    let store = &backend.store;
    let tenant = new_tenant(&backend, "file").await;
    let lee = user("lee");
    let marker = "unmistakable-marker-4f1c9a";
    store.record_consent(&tenant.id, &lee, BOTH, T0).await.expect("grant");
    store.start_session(&tenant.id, &lee, &session("s1"), PrivacyTier::OnDevice, T0).await.expect("start");
    store.store_transcript(&tenant.id, &session("s1"), marker, T0).await.expect("store");

    let file_contains_marker = || {
        let mut bytes = std::fs::read(path).expect("read database file");
        let wal = path.with_extension("sqlite-wal");
        if let Ok(log) = std::fs::read(&wal) {
            bytes.extend(log);
        }
        bytes.windows(marker.len()).any(|window| window == marker.as_bytes())
    };
    assert!(file_contains_marker(), "the marker must be on disk before the deletion for this test to mean anything");

    store.delete_user(&tenant.id, &lee, T0).await.expect("delete");
    assert!(!file_contains_marker(), "deleted transcript still readable in {}", path.display());
}

/// Row-level security on its own keeps tenants apart: with tenant A set, a
/// query without any tenant filter returns only A's rows, and with no tenant
/// set it returns nothing. The application role must not be able to bypass it.
#[tokio::test]
async fn postgres_row_level_security() {
    let Some(backend) = store_support::postgres_backend().await else {
        return;
    };
    let store = &backend.store;
    let a = new_tenant(&backend, "rls-a").await;
    let b = new_tenant(&backend, "rls-b").await;
    for tenant in [&a, &b] {
        let mia = user("mia");
        store.record_consent(&tenant.id, &mia, BOTH, T0).await.expect("grant");
        store.start_session(&tenant.id, &mia, &session("s1"), PrivacyTier::OnDevice, T0).await.expect("start");
        store.store_transcript(&tenant.id, &session("s1"), &format!("said in {}", tenant.id), T0).await.expect("store");
    }
    let store_support::Raw::Postgres(app_url) = &backend.raw else {
        unreachable!("postgres_backend returns a PostgreSQL backend");
    };
    let mut client = store_support::raw_postgres(app_url).await;

    // The role is an ordinary one that row-level security applies to.
    let role = client
        .query_one("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .expect("read role");
    assert!(!role.get::<_, bool>(0), "the application role must not be a superuser");
    assert!(!role.get::<_, bool>(1), "the application role must not have BYPASSRLS");
    let owner: String = client
        .query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'transcripts'", &[])
        .await
        .expect("read owner")
        .get(0);
    assert_ne!(owner, store_support::app_role_of(app_url), "the application role must not own the tables");

    // Tenant A set, no tenant filter in the SQL.
    let transaction = client.transaction().await.expect("begin");
    transaction
        .execute("SELECT set_config('app.tenant_id', $1, true)", &[&a.id.as_str()])
        .await
        .expect("set tenant");
    for table in ["users", "consents", "sessions", "transcripts"] {
        let rows = transaction.query(&format!("SELECT DISTINCT tenant_id FROM {table}"), &[]).await.expect("select");
        let tenants: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(tenants, [a.id.to_string()], "{table} shows other tenants' rows");
    }
    let texts: Vec<String> = transaction
        .query("SELECT text FROM transcripts", &[])
        .await
        .expect("select")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(texts, [format!("said in {}", a.id)]);

    // Writing a row of tenant B while A is set violates the policy.
    let write = transaction
        .execute("INSERT INTO users (tenant_id, id, created_at) VALUES ($1, 'intruder', 0)", &[&b.id.as_str()])
        .await;
    let error = write.expect_err("insert into another tenant must fail");
    let message = error.as_db_error().map(|db| db.message().to_owned()).unwrap_or_default();
    assert!(message.contains("row-level security"), "{error:?}");
    drop(transaction);

    // No tenant set: nothing is visible, and the audit log cannot be emptied.
    let count: i64 = client.query_one("SELECT count(*) FROM transcripts", &[]).await.expect("count").get(0);
    assert_eq!(count, 0);
    let delete = client.execute("DELETE FROM audit_log", &[]).await;
    assert!(delete.is_err(), "the application role must not delete audit entries");
}
