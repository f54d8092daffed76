-- Issue 20: signed artifacts, rollouts, what runs on each box (as SQLite 0008).

-- Publisher keys an admin trusts, per workspace (`publisher-key add`).
CREATE TABLE publisher_keys (
    workspace   TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    public_key  TEXT NOT NULL,
    added_at    BIGINT NOT NULL,
    PRIMARY KEY (workspace, public_key)
);

-- One row per artifact version: the manifest exactly as signed, and the
-- signature. `awaiting_payload` until the uploaded payload matched the
-- manifest's size and SHA-256, then `ready`.
CREATE TABLE artifacts (
    workspace     TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    manifest_json TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    signature     TEXT NOT NULL,
    size          BIGINT NOT NULL,
    sha256        TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    uploaded_at   BIGINT,
    PRIMARY KEY (workspace, name, version)
);

-- The payload in fixed-size chunks (the last one shorter).
CREATE TABLE artifact_chunks (
    workspace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    idx         BIGINT NOT NULL,
    data        BYTEA NOT NULL,
    PRIMARY KEY (workspace, name, version, idx),
    FOREIGN KEY (workspace, name, version) REFERENCES artifacts(workspace, name, version) ON DELETE CASCADE
);

CREATE TABLE rollouts (
    id               TEXT COLLATE "C" PRIMARY KEY,
    workspace        TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    artifact_name    TEXT NOT NULL,
    artifact_version TEXT NOT NULL,
    selector         TEXT NOT NULL,      -- JSON array of "k=v" / "k"
    waves            TEXT NOT NULL,      -- JSON array of wave specs as given ("1", "25%")
    max_failures     BIGINT NOT NULL,
    wave_timeout_ms  BIGINT NOT NULL,
    approve_waves    BOOLEAN NOT NULL,
    state            TEXT NOT NULL,      -- running | paused | completed | aborted
    reason           TEXT,
    current_wave     BIGINT NOT NULL,   -- 0-based index of the newest started wave
    wave_started_at  BIGINT NOT NULL,
    accepted_failures BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX rollouts_workspace ON rollouts(workspace, created_at);
CREATE INDEX rollouts_active ON rollouts(state);
-- One running or paused rollout per artifact name and workspace: racing
-- replicas' inserts are decided by this index.
CREATE UNIQUE INDEX rollouts_one_active ON rollouts(workspace, artifact_name)
    WHERE state IN ('running', 'paused');

CREATE TABLE rollout_devices (
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    wave        BIGINT NOT NULL,
    state       TEXT NOT NULL,  -- pending | downloading | installing | verifying | succeeded | failed | rolled_back
    error       TEXT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_device ON rollout_devices(device_id);

-- What each box says runs (`current`), from its hello and reports.
CREATE TABLE device_artifacts (
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (device_id, name)
);
