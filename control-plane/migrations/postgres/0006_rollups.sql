-- Issue 18: telemetry rollup tiers (docs/ARCHITECTURE.md, "Telemetry history").
-- One row per device and minute / hour, written in the transaction that stores
-- the raw samples (store/rollup.rs says what a row holds and how rows merge).

CREATE TABLE telemetry_1m (
    device_id       TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    bucket          BIGINT NOT NULL,       -- start, unix ms
    n               BIGINT NOT NULL,
    cpu_sum         DOUBLE PRECISION NOT NULL,
    cpu_max         DOUBLE PRECISION NOT NULL,
    mem_sum         DOUBLE PRECISION NOT NULL,
    mem_total_max   BIGINT NOT NULL,
    disk_sum        DOUBLE PRECISION NOT NULL,
    disk_total_max  BIGINT NOT NULL,
    load_sum        DOUBLE PRECISION NOT NULL,
    temp_max        DOUBLE PRECISION,               -- NULL: no sample had a sensor
    gpu_n           BIGINT NOT NULL,       -- samples that had GPUs
    gpu_util_sum    DOUBLE PRECISION NOT NULL,
    gpu_mem_sum     DOUBLE PRECISION NOT NULL,
    first_ts        BIGINT NOT NULL,       -- the first and last samples' network
    first_seq       BIGINT NOT NULL,       -- counters, for the increases across
    first_rx        BIGINT NOT NULL,       -- the seams when rows are merged
    first_tx        BIGINT NOT NULL,
    last_ts         BIGINT NOT NULL,
    last_seq        BIGINT NOT NULL,
    last_rx         BIGINT NOT NULL,
    last_tx         BIGINT NOT NULL,
    rx_inc          BIGINT NOT NULL,       -- increases between consecutive samples
    tx_inc          BIGINT NOT NULL,
    PRIMARY KEY (device_id, bucket)
);

CREATE TABLE telemetry_1h (
    device_id       TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    bucket          BIGINT NOT NULL,       -- start, unix ms
    n               BIGINT NOT NULL,
    cpu_sum         DOUBLE PRECISION NOT NULL,
    cpu_max         DOUBLE PRECISION NOT NULL,
    mem_sum         DOUBLE PRECISION NOT NULL,
    mem_total_max   BIGINT NOT NULL,
    disk_sum        DOUBLE PRECISION NOT NULL,
    disk_total_max  BIGINT NOT NULL,
    load_sum        DOUBLE PRECISION NOT NULL,
    temp_max        DOUBLE PRECISION,               -- NULL: no sample had a sensor
    gpu_n           BIGINT NOT NULL,       -- samples that had GPUs
    gpu_util_sum    DOUBLE PRECISION NOT NULL,
    gpu_mem_sum     DOUBLE PRECISION NOT NULL,
    first_ts        BIGINT NOT NULL,       -- the first and last samples' network
    first_seq       BIGINT NOT NULL,       -- counters, for the increases across
    first_rx        BIGINT NOT NULL,       -- the seams when rows are merged
    first_tx        BIGINT NOT NULL,
    last_ts         BIGINT NOT NULL,
    last_seq        BIGINT NOT NULL,
    last_rx         BIGINT NOT NULL,
    last_tx         BIGINT NOT NULL,
    rx_inc          BIGINT NOT NULL,       -- increases between consecutive samples
    tx_inc          BIGINT NOT NULL,
    PRIMARY KEY (device_id, bucket)
);

-- Devices whose raw history predates the tiers: the control plane fills
-- their tiers from raw once, in the background, hour-aligned chunks from
-- next_ts on until until_ts (the newest sample at the upgrade; later ones
-- were rolled up as they came), and then removes the row.
CREATE TABLE telemetry_rollup_backfill (
    device_id   TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    next_ts     BIGINT NOT NULL,
    until_ts    BIGINT NOT NULL
);
INSERT INTO telemetry_rollup_backfill (device_id, next_ts, until_ts)
    SELECT device_id, MIN(ts), MAX(ts) FROM telemetry GROUP BY device_id;
