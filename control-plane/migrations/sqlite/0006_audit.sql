-- The operator audit trail: one row per mutating REST call and per admin
-- CLI action. Never a key, token, install ID, query string or body.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ts          INTEGER NOT NULL,
    -- NULL: the path named no valid workspace (or an admin action on none).
    workspace   TEXT,
    -- API key id, 'admin-cli', or NULL (not authenticated).
    actor       TEXT,
    action      TEXT NOT NULL,
    target      TEXT,
    status      INTEGER NOT NULL,
    request_id  TEXT,
    client_addr TEXT
);
CREATE INDEX audit_log_workspace ON audit_log(workspace, id);
CREATE INDEX audit_log_ts ON audit_log(ts);
