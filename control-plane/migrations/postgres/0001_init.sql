-- Outpost control plane schema (PostgreSQL). Times are unix milliseconds
-- (UTC) in BIGINT. The same tables, columns and indexes as the SQLite
-- migrations 0001..0004 combined; JSON stays in TEXT columns, encoded and
-- decoded exactly as on SQLite. Identifiers the API sorts by (workspace
-- names, device and key ids) use the "C" collation: byte order, as SQLite's
-- BINARY, whatever locale the database was created with.

CREATE TABLE workspaces (
    name        TEXT COLLATE "C" PRIMARY KEY,
    features    TEXT NOT NULL DEFAULT '[]',      -- JSON array of feature flags
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT COLLATE "C" PRIMARY KEY,
    workspace   TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    key_hash    TEXT NOT NULL UNIQUE,            -- SHA-256 of the plaintext key
    scopes      TEXT,                            -- JSON array; NULL = legacy key with every scope
    device_id   TEXT,                            -- set for device-scoped keys
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_device ON api_keys(device_id);
-- PostgreSQL only: list_api_keys and the ON DELETE CASCADE from workspaces
-- (PostgreSQL does not index referencing columns by itself).
CREATE INDEX api_keys_workspace_created ON api_keys(workspace, created_at);

CREATE TABLE devices (
    id                      TEXT COLLATE "C" PRIMARY KEY,
    workspace               TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    name                    TEXT NOT NULL,
    description             TEXT NOT NULL DEFAULT '',
    device_type             TEXT NOT NULL,
    enabled                 BOOLEAN NOT NULL DEFAULT TRUE,
    created_at              BIGINT NOT NULL,
    install_id_hash         TEXT UNIQUE,         -- SHA-256 of the install ID
    install_id_expires_at   BIGINT,
    install_key_sha256      TEXT,                -- public key the install ID is bound to
    install_spent           BOOLEAN NOT NULL DEFAULT FALSE,
    facts                   TEXT,                -- JSON DeviceFacts from the last hello
    session_id              TEXT,                -- live session, NULL when none
    last_heartbeat          BIGINT,
    current_cert_serial     TEXT,
    cert_expires_at         BIGINT,
    -- The full operator surface (SQLite 0002).
    deleted_at              BIGINT,              -- soft delete: kept for the agent's decommission signal
    workflow_id             TEXT,
    offline_mode            BOOLEAN NOT NULL DEFAULT FALSE,
    config_version          BIGINT NOT NULL DEFAULT 0,
    config_applied_version  BIGINT NOT NULL DEFAULT 0,
    -- What each agent reports it lost, running totals since its enrollment
    -- (SQLite 0004).
    telemetry_dropped       BIGINT NOT NULL DEFAULT 0,
    logs_dropped            BIGINT NOT NULL DEFAULT 0,
    spool_corrupt           BIGINT NOT NULL DEFAULT 0,
    logs_rate_limited       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX devices_workspace_created ON devices(workspace, created_at, id);

CREATE TABLE device_certs (
    serial          TEXT PRIMARY KEY,            -- hex of the DER serial
    device_id       TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    not_before      BIGINT NOT NULL,
    not_after       BIGINT NOT NULL,
    issued_at       BIGINT NOT NULL,
    revoked_at      BIGINT,
    -- Rotation (SQLite 0003): a certificate replaced by a newer one stays
    -- usable until the new one has been used, or for a short grace period.
    superseded_at   BIGINT
);
CREATE INDEX device_certs_device ON device_certs(device_id);

CREATE TABLE telemetry (
    device_id           TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    seq                 BIGINT NOT NULL,
    ts                  BIGINT NOT NULL,
    received_at         BIGINT NOT NULL,
    cpu_percent         DOUBLE PRECISION NOT NULL,
    memory_used_bytes   BIGINT NOT NULL,
    memory_total_bytes  BIGINT NOT NULL,
    swap_used_bytes     BIGINT NOT NULL,
    swap_total_bytes    BIGINT NOT NULL,
    disk_used_bytes     BIGINT NOT NULL,
    disk_total_bytes    BIGINT NOT NULL,
    network_rx_bytes    BIGINT NOT NULL,
    network_tx_bytes    BIGINT NOT NULL,
    load_1m             DOUBLE PRECISION NOT NULL,
    load_5m             DOUBLE PRECISION NOT NULL,
    load_15m            DOUBLE PRECISION NOT NULL,
    uptime_secs         BIGINT NOT NULL,
    temperatures        TEXT NOT NULL,           -- JSON [{sensor, celsius}]
    gpus                TEXT NOT NULL,           -- JSON [GpuSample]
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX telemetry_device_ts ON telemetry(device_id, ts);

CREATE TABLE events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_device ON events(device_id, id);
-- PostgreSQL only: retention deletes by time across all devices.
CREATE INDEX events_ts ON events(ts);

CREATE TABLE device_configs (
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    config      TEXT NOT NULL,                   -- JSON object
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (device_id, version)
);

CREATE TABLE logs (
    device_id     TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    ts            BIGINT NOT NULL,
    received_at   BIGINT NOT NULL,
    service       TEXT NOT NULL,
    severity      TEXT NOT NULL,
    severity_rank BIGINT NOT NULL,               -- 0 debug … 7 emergency, for "this level and above"
    message       TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
);
-- SQLite's index on this WITHOUT ROWID table carries the primary key too,
-- i.e. (device_id, ts, seq): spelled out here so that query_logs' ORDER BY
-- ts DESC, seq DESC and its (ts, seq) cursor walk the index alone.
CREATE INDEX logs_device_ts ON logs(device_id, ts, seq);
