-- Rotation: a certificate replaced by a newer one stays usable until the new
-- one has been used, or for a short grace period.
ALTER TABLE device_certs ADD COLUMN superseded_at INTEGER;
