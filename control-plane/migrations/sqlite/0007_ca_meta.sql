-- The fingerprint of the device CA this database belongs to, recorded by the
-- first control plane to start on it: a replica with another CA refuses to
-- start instead of handing half the fleet another fingerprint.
CREATE TABLE ca_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
