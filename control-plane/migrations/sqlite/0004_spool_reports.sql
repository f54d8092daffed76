-- What each agent reports it lost (running totals since its enrollment).
ALTER TABLE devices ADD COLUMN telemetry_dropped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN logs_dropped INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN spool_corrupt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN logs_rate_limited INTEGER NOT NULL DEFAULT 0;
