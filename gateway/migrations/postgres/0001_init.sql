-- Schema of the PostgreSQL store. Times are milliseconds since the Unix
-- epoch; retention periods are seconds.
--
-- Tables with user data have row-level security keyed on the transaction
-- setting app.tenant_id, which the store sets with set_config(..., true) at
-- the start of every transaction. FORCE makes the policies apply to the
-- table owner too. When the setting is missing, current_setting(..., true)
-- is NULL, the comparison is never true, and no row is visible.
-- tenants and api_keys hold no user data and have no policy: an API key
-- must be looked up before its tenant is known.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    max_tier TEXT NOT NULL CHECK (max_tier IN ('on_device', 'self_hosted', 'cloud')),
    transcript_retention_secs BIGINT NOT NULL CHECK (transcript_retention_secs >= 0),
    audio_retention_secs BIGINT NOT NULL CHECK (audio_retention_secs >= 0),
    max_concurrent_sessions BIGINT NOT NULL,
    max_new_sessions_per_minute BIGINT NOT NULL,
    max_audio_seconds_per_day BIGINT NOT NULL,
    max_message_bytes BIGINT NOT NULL,
    max_session_seconds BIGINT NOT NULL
);

-- Only the SHA-256 digest of each key is stored.
CREATE TABLE api_keys (
    key_hash BYTEA PRIMARY KEY CHECK (length(key_hash) = 32),
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE users (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- Append-only: a withdrawal is a new row, and the row with the highest seq
-- is the user's current consent.
CREATE TABLE consents (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    transcripts BOOLEAN NOT NULL,
    audio BOOLEAN NOT NULL,
    recorded_at BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX consents_by_user ON consents (tenant_id, user_id, seq);

CREATE TABLE sessions (
    tenant_id TEXT NOT NULL,
    id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    tier TEXT NOT NULL CHECK (tier IN ('on_device', 'self_hosted', 'cloud')),
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX sessions_by_user ON sessions (tenant_id, user_id);

CREATE TABLE transcripts (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX transcripts_by_user ON transcripts (tenant_id, user_id);
CREATE INDEX transcripts_by_age ON transcripts (tenant_id, created_at);

CREATE TABLE audio (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    format TEXT NOT NULL,
    data BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX audio_by_user ON audio (tenant_id, user_id);
CREATE INDEX audio_by_age ON audio (tenant_id, created_at);

-- Records that data was deleted, never the data. No foreign key to users:
-- the entry outlives the user it describes.
CREATE TABLE audit_log (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    action TEXT NOT NULL,
    subject_sha256 TEXT,
    consent_records BIGINT NOT NULL,
    sessions BIGINT NOT NULL,
    transcripts BIGINT NOT NULL,
    audio BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, seq);

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON users
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE consents ENABLE ROW LEVEL SECURITY;
ALTER TABLE consents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON consents
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sessions
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE transcripts ENABLE ROW LEVEL SECURITY;
ALTER TABLE transcripts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON transcripts
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE audio ENABLE ROW LEVEL SECURITY;
ALTER TABLE audio FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audio
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
