-- fleet coordinator state, version 5: enrollment tokens (issue 12).

-- Uses of each enrollment token (fleet.protocol.enroll_token) that enrolled a device, and
-- tokens revoked by an admin. A row is written only when an authorized, unexpired token
-- enrolls a device or an admin revokes one, so the table grows with what admins signed and
-- asked, never with what anyone sends. A token revoked before any use has no signer yet.
CREATE TABLE enroll_tokens (
    token_id   BLOB PRIMARY KEY CHECK (length(token_id) = 16),
    signer     TEXT,
    used       INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),  -- devices enrolled with it
    max_uses   INTEGER CHECK (max_uses > 0),
    expires_at REAL,
    last_used  REAL,
    revoked_at REAL                                           -- NULL: not revoked
) WITHOUT ROWID;
