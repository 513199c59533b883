-- fleet coordinator state, version 5: enrollment tokens (issue 12).

-- Uses of each enrollment token (fleet.protocol.enroll_token) that enrolled a device. A row
-- is written only when an authorized, unexpired token enrolls a device, so the table grows
-- with what admins signed, never with what anyone sends.
CREATE TABLE enroll_tokens (
    token_id   BLOB PRIMARY KEY CHECK (length(token_id) = 16),
    signer     TEXT NOT NULL,
    used       INTEGER NOT NULL CHECK (used > 0),      -- devices enrolled with it so far
    max_uses   INTEGER NOT NULL CHECK (max_uses > 0),
    expires_at REAL NOT NULL,
    last_used  REAL NOT NULL
) WITHOUT ROWID;
