-- fleet coordinator state, version 2: capabilities (issue 5).

-- Every certificate seen in a verified chain (requests, announcements, grants), with the
-- chain ending at it, so `fleetctl revoke CERT_ID` can prove the revoker's authority over it.
CREATE TABLE certificates (
    id         BLOB PRIMARY KEY CHECK (length(id) = 32),
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    chain      BLOB NOT NULL,                    -- encoded fleet.capability.chain, ending here
    first_seen REAL NOT NULL
) WITHOUT ROWID;

-- Verified revocations, kept forever and handed to every agent.
CREATE TABLE revocations (
    certificate BLOB PRIMARY KEY CHECK (length(certificate) = 32),
    revoker     TEXT NOT NULL,
    signed      BLOB NOT NULL,                   -- encoded fleet.capability.signed-revocation
    received_at REAL NOT NULL
) WITHOUT ROWID;

-- The coordinator's signed checkpoints of the audit head (fleet.audit.checkpoint).
CREATE TABLE audit_checkpoints (
    sequence INTEGER PRIMARY KEY CHECK (sequence > 0),
    envelope BLOB NOT NULL,                      -- encoded fleet.envelope, Tag AUDIT_CHECKPOINT
    time     REAL NOT NULL
);
