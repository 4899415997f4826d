-- Schema of the embedded SQLite store. Times are milliseconds since the Unix
-- epoch; retention periods are seconds. Every table with user data carries
-- tenant_id, and every query of the store filters on it.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    max_tier TEXT NOT NULL CHECK (max_tier IN ('on_device', 'self_hosted', 'cloud')),
    transcript_retention_secs INTEGER NOT NULL CHECK (transcript_retention_secs >= 0),
    audio_retention_secs INTEGER NOT NULL CHECK (audio_retention_secs >= 0),
    max_concurrent_sessions INTEGER NOT NULL,
    max_new_sessions_per_minute INTEGER NOT NULL,
    max_audio_seconds_per_day INTEGER NOT NULL,
    max_message_bytes INTEGER NOT NULL,
    max_session_seconds INTEGER NOT NULL
);

-- Only the SHA-256 digest of each key is stored.
CREATE TABLE api_keys (
    key_hash BLOB PRIMARY KEY CHECK (length(key_hash) = 32),
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE users (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- Append-only: a withdrawal is a new row, and the row with the highest seq
-- is the user's current consent.
CREATE TABLE consents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    transcripts INTEGER NOT NULL CHECK (transcripts IN (0, 1)),
    audio INTEGER NOT NULL CHECK (audio IN (0, 1)),
    recorded_at INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX consents_by_user ON consents (tenant_id, user_id, seq);

CREATE TABLE sessions (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tier TEXT NOT NULL CHECK (tier IN ('on_device', 'self_hosted', 'cloud')),
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_by_user ON sessions (tenant_id, user_id);

CREATE TABLE transcripts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX transcripts_by_user ON transcripts (tenant_id, user_id);
CREATE INDEX transcripts_by_age ON transcripts (tenant_id, created_at);

CREATE TABLE audio (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    format TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX audio_by_user ON audio (tenant_id, user_id);
CREATE INDEX audio_by_age ON audio (tenant_id, created_at);

-- Records that data was deleted, never the data. No foreign key to users:
-- the entry outlives the user it describes.
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    action TEXT NOT NULL,
    subject_sha256 TEXT,
    consent_records INTEGER NOT NULL,
    sessions INTEGER NOT NULL,
    transcripts INTEGER NOT NULL,
    audio INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, seq);
