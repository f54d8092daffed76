-- Issue 19: enrollment tokens and device labels (as SQLite 0005).

-- Labels: the JSON object (read with the device) and one row per label
-- (what `?label=` filters join on). Both are written together.
ALTER TABLE devices ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
CREATE TABLE device_labels (
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (device_id, key)
);
CREATE INDEX device_labels_key_value ON device_labels(key, value);

-- A token enrolls up to max_uses boxes; only its SHA-256 is stored.
CREATE TABLE enrollment_tokens (
    id          TEXT COLLATE "C" PRIMARY KEY,
    workspace   TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    max_uses    BIGINT NOT NULL,
    uses        BIGINT NOT NULL DEFAULT 0,
    expires_at  BIGINT,
    labels      TEXT NOT NULL DEFAULT '{}',
    device_type TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX enrollment_tokens_workspace ON enrollment_tokens(workspace, created_at);

-- Which box key a token use created which device: a retry with the same
-- key (lost response) finds its device instead of spending another use.
CREATE TABLE enrollment_token_bindings (
    token_id    TEXT NOT NULL REFERENCES enrollment_tokens(id) ON DELETE CASCADE,
    key_sha256  TEXT NOT NULL,
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (token_id, key_sha256)
);
