//! The records a [`Store`](super::Store) keeps: identifiers, tenants, consent,
//! sessions, transcripts, audio and the audit log.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mentis_pipeline::PrivacyTier;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Maximum length of a tenant, user or session id, in bytes. Ids appear in
/// URLs, logs and index keys, so they are kept short.
pub const MAX_ID_LEN: usize = 128;

/// Maximum length of one stored transcript, in bytes of UTF-8. A final
/// transcript of one turn is a few hundred bytes; anything near this limit is
/// not speech.
pub const MAX_TRANSCRIPT_BYTES: usize = 64 * 1024;

/// Maximum size of one stored audio clip, in bytes: 8 MiB is over four
/// minutes of 16 kHz mono PCM16, longer than any turn.
pub const MAX_AUDIO_BYTES: usize = 8 * 1024 * 1024;

/// Maximum length of an audio format description such as `pcm16/16000/1`.
pub const MAX_AUDIO_FORMAT_LEN: usize = 64;

/// Checks that `value` is a usable id: 1 to [`MAX_ID_LEN`] bytes of ASCII
/// letters, digits and `-_.:@`.
fn validate_id(kind: &'static str, value: &str) -> Result<(), StoreError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@');
    if value.is_empty() || value.len() > MAX_ID_LEN || !value.chars().all(valid_char) {
        return Err(StoreError::InvalidId { kind, value: value.chars().take(MAX_ID_LEN + 1).collect() });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id: 1 to [`MAX_ID_LEN`] bytes of ASCII
            /// letters, digits and `-_.:@`.
            pub fn new(value: impl Into<String>) -> Result<Self, StoreError> {
                let value = value.into();
                validate_id($kind, &value)?;
                Ok($name(value))
            }

            /// Returns the id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = StoreError;

            fn try_from(value: String) -> Result<Self, StoreError> {
                $name::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

string_id!(
    /// A tenant: one customer of the gateway, with its own API keys, limits and data.
    TenantId,
    "tenant id"
);
string_id!(
    /// A user of a tenant's app, named by the tenant. Unique within its tenant only.
    UserId,
    "user id"
);
string_id!(
    /// A stored gateway session. Unique within its tenant; gateways that share
    /// a store must make ids unique across processes (for example with an
    /// instance prefix).
    SessionId,
    "session id"
);

/// A point in time, in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Returns the current wall-clock time. A clock set before 1970 reads as the epoch.
    pub fn now() -> Timestamp {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }

    /// This time moved back by `duration`, saturating at the smallest value.
    #[must_use]
    pub fn minus(self, duration: Duration) -> Timestamp {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(millis))
    }

    /// This time moved forward by `duration`, saturating at the largest value.
    #[must_use]
    pub fn plus(self, duration: Duration) -> Timestamp {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(millis))
    }
}

/// Per-tenant limits that the gateway enforces on sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantLimits {
    /// Sessions open at the same time, across all gateway processes.
    pub max_concurrent_sessions: u32,
    /// Sessions started within one minute.
    pub max_new_sessions_per_minute: u32,
    /// Seconds of client audio accepted per UTC day.
    pub max_audio_seconds_per_day: u64,
    /// Largest WebSocket message, in bytes.
    pub max_message_bytes: u32,
    /// Maximum session length, in seconds.
    pub max_session_seconds: u32,
    /// Maximum audio frame (one binary message), in milliseconds.
    #[serde(default = "default_max_frame_ms")]
    pub max_frame_ms: u32,
}

fn default_max_frame_ms() -> u32 {
    120
}

impl Default for TenantLimits {
    /// Modest limits for a new tenant: 10 sessions at once, 30 new sessions a
    /// minute, 10 hours of audio a day, 64 KiB messages, 1-hour sessions,
    /// 120 ms frames.
    fn default() -> Self {
        TenantLimits {
            max_concurrent_sessions: 10,
            max_new_sessions_per_minute: 30,
            max_audio_seconds_per_day: 10 * 3600,
            max_message_bytes: 64 * 1024,
            max_session_seconds: 3600,
            max_frame_ms: default_max_frame_ms(),
        }
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// The tenant's id.
    pub id: TenantId,
    /// A display name for operators.
    pub name: String,
    /// The widest privacy tier its sessions may request.
    pub max_tier: PrivacyTier,
    /// How long transcripts are kept before the purge job deletes them.
    pub transcript_retention: Duration,
    /// How long stored audio is kept before the purge job deletes it.
    pub audio_retention: Duration,
    /// Limits on its sessions.
    pub limits: TenantLimits,
    /// Browser origins (such as `https://app.example.com`) allowed to open
    /// sessions; a request without an `Origin` header is not checked.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

/// The kinds of data a user has agreed may be stored. Both false means nothing is stored,
/// which is also the state of a user with no consent record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConsentScope {
    /// Final transcripts of the user's speech may be stored.
    pub transcripts: bool,
    /// The user's audio may be stored.
    pub audio: bool,
}

impl ConsentScope {
    /// No consent: nothing is stored.
    pub const NONE: ConsentScope = ConsentScope { transcripts: false, audio: false };
}

/// One consent decision of a user. A withdrawal is a record with a narrower
/// scope; the latest record is the user's current consent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    /// The user.
    pub user_id: UserId,
    /// The kinds of data the user agreed to.
    pub scope: ConsentScope,
    /// When the decision was recorded.
    pub recorded_at: Timestamp,
}

/// A gateway session as stored: who, when, and on which tier. No content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session.
    pub session_id: SessionId,
    /// The user it belongs to.
    pub user_id: UserId,
    /// The privacy tier the session ran on.
    pub tier: PrivacyTier,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended, if it has.
    pub ended_at: Option<Timestamp>,
}

/// One stored final transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptRecord {
    /// The session it was spoken in.
    pub session_id: SessionId,
    /// The transcript text.
    pub text: String,
    /// When it was stored.
    pub created_at: Timestamp,
}

/// One stored audio clip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioRecord {
    /// The session it was recorded in.
    pub session_id: SessionId,
    /// The format of `data`, such as `pcm16/16000/1` (sample format, rate, channels).
    pub format: String,
    /// The audio bytes.
    pub data: Vec<u8>,
    /// When it was stored.
    pub created_at: Timestamp,
}

/// Whether a transcript or audio clip was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Stored.
    Stored,
    /// Not stored, because the user's current consent does not cover it.
    NotConsented,
}

/// Everything stored about one user, as the export API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserExport {
    /// The tenant.
    pub tenant_id: TenantId,
    /// The user.
    pub user_id: UserId,
    /// When the export was made.
    pub exported_at: Timestamp,
    /// Every consent decision, oldest first.
    pub consent_history: Vec<ConsentRecord>,
    /// Every session, oldest first.
    pub sessions: Vec<SessionRecord>,
    /// Every stored transcript, oldest first.
    pub transcripts: Vec<TranscriptRecord>,
    /// Every stored audio clip, oldest first. Audio bytes are base64 in JSON.
    #[serde(with = "audio_base64")]
    pub audio: Vec<AudioRecord>,
}

/// Serializes audio clips with their bytes as base64 text instead of a
/// JSON array of numbers.
mod audio_base64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{AudioRecord, SessionId, Timestamp};

    #[derive(Serialize, Deserialize)]
    struct Encoded {
        session_id: SessionId,
        format: String,
        data_base64: String,
        created_at: Timestamp,
    }

    pub fn serialize<S: Serializer>(clips: &[AudioRecord], serializer: S) -> Result<S::Ok, S::Error> {
        let encoded: Vec<Encoded> = clips
            .iter()
            .map(|clip| Encoded {
                session_id: clip.session_id.clone(),
                format: clip.format.clone(),
                data_base64: STANDARD.encode(&clip.data),
                created_at: clip.created_at,
            })
            .collect();
        encoded.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<AudioRecord>, D::Error> {
        let encoded = Vec::<Encoded>::deserialize(deserializer)?;
        encoded
            .into_iter()
            .map(|clip| {
                let data = STANDARD.decode(&clip.data_base64).map_err(serde::de::Error::custom)?;
                Ok(AudioRecord { session_id: clip.session_id, format: clip.format, data, created_at: clip.created_at })
            })
            .collect()
    }
}

/// Row counts removed by a deletion or a purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeletedCounts {
    /// Consent records.
    pub consent_records: u64,
    /// Sessions.
    pub sessions: u64,
    /// Transcripts.
    pub transcripts: u64,
    /// Audio clips.
    pub audio: u64,
}

/// The kind of event an audit entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Everything about one user was deleted on request.
    UserDeleted,
    /// The retention purge deleted expired transcripts or audio.
    RetentionPurge,
}

impl AuditAction {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::UserDeleted => "user_deleted",
            AuditAction::RetentionPurge => "retention_purge",
        }
    }

    /// Parses a stored name.
    pub fn parse(value: &str) -> Result<AuditAction, StoreError> {
        match value {
            "user_deleted" => Ok(AuditAction::UserDeleted),
            "retention_purge" => Ok(AuditAction::RetentionPurge),
            other => Err(StoreError::Corrupt { what: format!("unknown audit action {other:?}") }),
        }
    }
}

/// One entry of a tenant's audit log. It records that data was deleted and
/// how much, never the content. A user deletion keeps only a SHA-256 digest
/// of the user id, so an operator can confirm that a given user was deleted
/// without the log naming anyone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// What happened.
    pub action: AuditAction,
    /// Lowercase hex SHA-256 of the deleted user's id, for user deletions.
    pub subject_sha256: Option<String>,
    /// The counts of deleted rows.
    pub deleted: DeletedCounts,
    /// When it happened.
    pub at: Timestamp,
}

/// The rows one run of the retention purge deleted, over all tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PurgeSummary {
    /// Tenants that had expired data.
    pub tenants: u64,
    /// Transcripts deleted.
    pub transcripts: u64,
    /// Audio clips deleted.
    pub audio: u64,
}

/// Parses a privacy tier as stored (`on_device`, `self_hosted`, `cloud`).
pub(crate) fn parse_tier(value: &str) -> Result<PrivacyTier, StoreError> {
    match value {
        "on_device" => Ok(PrivacyTier::OnDevice),
        "self_hosted" => Ok(PrivacyTier::SelfHosted),
        "cloud" => Ok(PrivacyTier::Cloud),
        other => Err(StoreError::Corrupt { what: format!("unknown privacy tier {other:?}") }),
    }
}

/// The stored name of a privacy tier.
pub(crate) fn tier_name(tier: PrivacyTier) -> &'static str {
    match tier {
        PrivacyTier::OnDevice => "on_device",
        PrivacyTier::SelfHosted => "self_hosted",
        PrivacyTier::Cloud => "cloud",
    }
}

/// Encodes allowed origins as stored: a JSON array of strings.
pub(crate) fn origins_json(origins: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(origins).map_err(|error| StoreError::Corrupt { what: format!("cannot encode allowed origins: {error}") })
}

/// Parses allowed origins as stored.
pub(crate) fn parse_origins(value: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(value).map_err(|error| StoreError::Corrupt { what: format!("allowed_origins is not a JSON array of strings: {error}") })
}

/// Checks a transcript against the size limit.
pub(crate) fn check_transcript(text: &str) -> Result<(), StoreError> {
    if text.len() > MAX_TRANSCRIPT_BYTES {
        return Err(StoreError::TooLarge { what: "transcript", size: text.len(), max: MAX_TRANSCRIPT_BYTES });
    }
    Ok(())
}

/// Checks an audio clip and its format description against the size limits.
pub(crate) fn check_audio(format: &str, data: &[u8]) -> Result<(), StoreError> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.');
    if format.is_empty() || format.len() > MAX_AUDIO_FORMAT_LEN || !format.chars().all(valid_char) {
        return Err(StoreError::InvalidAudioFormat { value: format.chars().take(MAX_AUDIO_FORMAT_LEN + 1).collect() });
    }
    if data.len() > MAX_AUDIO_BYTES {
        return Err(StoreError::TooLarge { what: "audio clip", size: data.len(), max: MAX_AUDIO_BYTES });
    }
    Ok(())
}
