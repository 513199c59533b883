-- fleet coordinator state, version 4: audit witnesses (issue 10).

-- Audit checkpoints (this coordinator's signatures, fleet.audit.checkpoint) that agents
-- reported keeping (Hello v3, fleet.agent.witness). `fleetctl audit verify` checks the log
-- against every one of them. Per device the newest checkpoint that matches the log is kept,
-- and every one that does not (up to a bound): those are the evidence of a rewritten log.
-- No foreign key: removing a device does not remove what it witnessed.
CREATE TABLE audit_witnesses (
    node_id     TEXT NOT NULL,
    sequence    INTEGER NOT NULL CHECK (sequence > 0),
    head        BLOB NOT NULL CHECK (length(head) = 32),
    envelope    BLOB NOT NULL,                   -- encoded fleet.envelope, Tag AUDIT_CHECKPOINT
    reported_at REAL NOT NULL,
    PRIMARY KEY (node_id, sequence, head)
) WITHOUT ROWID;
