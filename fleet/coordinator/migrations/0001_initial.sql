-- fleet coordinator state, version 1.
-- Node ids are stored in their canonical text form (lowercase base32), times as unix seconds.

CREATE TABLE devices (
    node_id    TEXT PRIMARY KEY,
    name       TEXT UNIQUE,                      -- NULL while pending and unnamed
    tags       TEXT NOT NULL DEFAULT '[]',       -- JSON array of strings, sorted
    approved   INTEGER NOT NULL DEFAULT 0 CHECK (approved IN (0, 1)),
    first_seen REAL,                             -- first agent connection (NULL: never seen)
    last_seen  REAL,                             -- last agent connection or disconnection
    added_at   REAL NOT NULL
);

-- Admin-signed announcements, kept verbatim: the envelope bytes are what agents verify.
CREATE TABLE announcements (
    sequence    INTEGER PRIMARY KEY CHECK (sequence > 0),
    signer      TEXT NOT NULL,
    envelope    BLOB NOT NULL,                   -- encoded fleet.envelope, exactly as signed
    store_path  TEXT NOT NULL,
    action      TEXT NOT NULL,
    issued_at   REAL NOT NULL,
    valid_until REAL NOT NULL,
    targets     TEXT NOT NULL,                   -- JSON array: what the admin typed
    received_at REAL NOT NULL
);

-- The devices each announcement targets (history: rows stay when a device is removed).
CREATE TABLE announcement_devices (
    node_id  TEXT NOT NULL,
    sequence INTEGER NOT NULL REFERENCES announcements (sequence),
    PRIMARY KEY (node_id, sequence)
) WITHOUT ROWID;

-- Each device's last reported state (progress is live-only and not kept).
CREATE TABLE device_status (
    node_id            TEXT PRIMARY KEY REFERENCES devices (node_id) ON DELETE CASCADE,
    state              TEXT NOT NULL,
    state_since        REAL NOT NULL,
    sequence           INTEGER,
    desired            TEXT,
    current_path       TEXT,
    current_generation INTEGER,
    error              TEXT,
    exit_code          INTEGER,
    log_tail           TEXT,
    reported_at        REAL NOT NULL
);

-- Append-only, hash-chained audit log of administrative actions, accepted and refused.
-- hash = SHA-256 of the canonical encoding of (id, time, actor, action, outcome, detail,
-- request, prev_hash); prev_hash of the first row is 32 zero bytes (fleet.coordinator.audit).
CREATE TABLE audit (
    id        INTEGER PRIMARY KEY CHECK (id > 0),
    time      REAL NOT NULL,
    actor     TEXT NOT NULL,                     -- TLS-verified node id of the connection
    action    TEXT NOT NULL,
    outcome   TEXT NOT NULL CHECK (outcome IN ('accepted', 'refused')),
    detail    TEXT NOT NULL,                     -- JSON object
    request   BLOB NOT NULL,                     -- the signed request bytes, verbatim
    prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
    hash      BLOB NOT NULL UNIQUE CHECK (length(hash) = 32)
);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only');
END;

-- Nonces of admin requests seen within the freshness window (replay protection).
CREATE TABLE admin_nonces (
    nonce     BLOB PRIMARY KEY,
    signer    TEXT NOT NULL,
    issued_at REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX admin_nonces_by_issued ON admin_nonces (issued_at);
