-- Outpost control plane schema (SQLite). Times are unix milliseconds (UTC).

CREATE TABLE workspaces (
    name        TEXT PRIMARY KEY,
    features    TEXT NOT NULL DEFAULT '[]',      -- JSON array of feature flags
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    workspace   TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    key_hash    TEXT NOT NULL UNIQUE,            -- SHA-256 of the plaintext key
    scopes      TEXT,                            -- JSON array; NULL = legacy key with every scope
    device_id   TEXT,                            -- set for device-scoped keys
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX api_keys_device ON api_keys(device_id);

CREATE TABLE devices (
    id                      TEXT PRIMARY KEY,
    workspace               TEXT NOT NULL REFERENCES workspaces(name) ON DELETE CASCADE,
    name                    TEXT NOT NULL,
    description             TEXT NOT NULL DEFAULT '',
    device_type             TEXT NOT NULL,
    enabled                 INTEGER NOT NULL DEFAULT 1,
    created_at              INTEGER NOT NULL,
    install_id_hash         TEXT UNIQUE,         -- SHA-256 of the install ID
    install_id_expires_at   INTEGER,
    install_key_sha256      TEXT,                -- public key the install ID is bound to
    install_spent           INTEGER NOT NULL DEFAULT 0,
    facts                   TEXT,                -- JSON DeviceFacts from the last hello
    session_id              TEXT,                -- live session, NULL when none
    last_heartbeat          INTEGER,
    current_cert_serial     TEXT,
    cert_expires_at         INTEGER
);
CREATE INDEX devices_workspace_created ON devices(workspace, created_at, id);

CREATE TABLE device_certs (
    serial      TEXT PRIMARY KEY,                -- hex of the DER serial
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    issued_at   INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX device_certs_device ON device_certs(device_id);

CREATE TABLE telemetry (
    device_id           TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    seq                 INTEGER NOT NULL,
    ts                  INTEGER NOT NULL,
    received_at         INTEGER NOT NULL,
    cpu_percent         REAL NOT NULL,
    memory_used_bytes   INTEGER NOT NULL,
    memory_total_bytes  INTEGER NOT NULL,
    swap_used_bytes     INTEGER NOT NULL,
    swap_total_bytes    INTEGER NOT NULL,
    disk_used_bytes     INTEGER NOT NULL,
    disk_total_bytes    INTEGER NOT NULL,
    network_rx_bytes    INTEGER NOT NULL,
    network_tx_bytes    INTEGER NOT NULL,
    load_1m             REAL NOT NULL,
    load_5m             REAL NOT NULL,
    load_15m            REAL NOT NULL,
    uptime_secs         INTEGER NOT NULL,
    temperatures        TEXT NOT NULL,           -- JSON [{sensor, celsius}]
    gpus                TEXT NOT NULL,           -- JSON [GpuSample]
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX telemetry_device_ts ON telemetry(device_id, ts);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT NOT NULL,
    workspace   TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_device ON events(device_id, id);
