-- The full operator surface: soft delete, versioned configs, logs, richer events.

ALTER TABLE devices ADD COLUMN deleted_at INTEGER;           -- soft delete: kept for the agent's decommission signal
ALTER TABLE devices ADD COLUMN workflow_id TEXT;
ALTER TABLE devices ADD COLUMN offline_mode INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN config_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN config_applied_version INTEGER NOT NULL DEFAULT 0;

CREATE TABLE device_configs (
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    config      TEXT NOT NULL,                   -- JSON object
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (device_id, version)
) WITHOUT ROWID;

CREATE TABLE logs (
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    ts          INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    service     TEXT NOT NULL,
    severity    TEXT NOT NULL,
    severity_rank INTEGER NOT NULL,              -- 0 debug … 7 emergency, for "this level and above"
    message     TEXT NOT NULL,
    PRIMARY KEY (device_id, seq)
) WITHOUT ROWID;
CREATE INDEX logs_device_ts ON logs(device_id, ts);
