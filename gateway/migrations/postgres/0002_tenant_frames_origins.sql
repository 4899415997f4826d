-- The longest audio frame a tenant's clients may send, and the browser
-- origins allowed to open its sessions (a JSON array of strings).
ALTER TABLE tenants ADD COLUMN max_frame_ms BIGINT NOT NULL DEFAULT 120;
ALTER TABLE tenants ADD COLUMN allowed_origins TEXT NOT NULL DEFAULT '[]';
