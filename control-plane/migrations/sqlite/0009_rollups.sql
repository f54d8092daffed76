-- Issue 18: telemetry rollup tiers (docs/ARCHITECTURE.md, "Telemetry history").
-- One row per device and minute / hour, written in the transaction that stores
-- the raw samples (store/rollup.rs says what a row holds and how rows merge).

CREATE TABLE telemetry_1m (
    device_id       TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    bucket          INTEGER NOT NULL,       -- start, unix ms
    n               INTEGER NOT NULL,
    cpu_sum         REAL NOT NULL,
    cpu_max         REAL NOT NULL,
    mem_sum         REAL NOT NULL,
    mem_total_max   INTEGER NOT NULL,
    disk_sum        REAL NOT NULL,
    disk_total_max  INTEGER NOT NULL,
    load_sum        REAL NOT NULL,
    temp_max        REAL,               -- NULL: no sample had a sensor
    gpu_n           INTEGER NOT NULL,       -- samples that had GPUs
    gpu_util_sum    REAL NOT NULL,
    gpu_mem_sum     REAL NOT NULL,
    first_ts        INTEGER NOT NULL,       -- the first and last samples' network
    first_seq       INTEGER NOT NULL,       -- counters, for the increases across
    first_rx        INTEGER NOT NULL,       -- the seams when rows are merged
    first_tx        INTEGER NOT NULL,
    last_ts         INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    last_rx         INTEGER NOT NULL,
    last_tx         INTEGER NOT NULL,
    rx_inc          INTEGER NOT NULL,       -- increases between consecutive samples
    tx_inc          INTEGER NOT NULL,
    PRIMARY KEY (device_id, bucket)
) WITHOUT ROWID;

CREATE TABLE telemetry_1h (
    device_id       TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    bucket          INTEGER NOT NULL,       -- start, unix ms
    n               INTEGER NOT NULL,
    cpu_sum         REAL NOT NULL,
    cpu_max         REAL NOT NULL,
    mem_sum         REAL NOT NULL,
    mem_total_max   INTEGER NOT NULL,
    disk_sum        REAL NOT NULL,
    disk_total_max  INTEGER NOT NULL,
    load_sum        REAL NOT NULL,
    temp_max        REAL,               -- NULL: no sample had a sensor
    gpu_n           INTEGER NOT NULL,       -- samples that had GPUs
    gpu_util_sum    REAL NOT NULL,
    gpu_mem_sum     REAL NOT NULL,
    first_ts        INTEGER NOT NULL,       -- the first and last samples' network
    first_seq       INTEGER NOT NULL,       -- counters, for the increases across
    first_rx        INTEGER NOT NULL,       -- the seams when rows are merged
    first_tx        INTEGER NOT NULL,
    last_ts         INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    last_rx         INTEGER NOT NULL,
    last_tx         INTEGER NOT NULL,
    rx_inc          INTEGER NOT NULL,       -- increases between consecutive samples
    tx_inc          INTEGER NOT NULL,
    PRIMARY KEY (device_id, bucket)
) WITHOUT ROWID;

-- Devices whose raw history predates the tiers: the control plane fills
-- their tiers from raw once, in the background, hour-aligned chunks from
-- next_ts on until until_ts (the newest sample at the upgrade; later ones
-- were rolled up as they came), and then removes the row.
CREATE TABLE telemetry_rollup_backfill (
    device_id   TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    next_ts     INTEGER NOT NULL,
    until_ts    INTEGER NOT NULL
);
INSERT INTO telemetry_rollup_backfill (device_id, next_ts, until_ts)
    SELECT device_id, MIN(ts), MAX(ts) FROM telemetry GROUP BY device_id;
