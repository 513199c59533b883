-- fleet coordinator state, version 3: what devices tell the admin beyond their state (issue 9).

-- The tags the agent itself reported in its Hello (JSON array, sorted), next to the registry's
-- `tags`: the agent checks scopes against its own, so a mismatch must be visible.
-- NULL: the agent never reported any (not connected yet, or an agent older than Hello v2).
ALTER TABLE devices ADD COLUMN agent_tags TEXT;

-- Announcements a device refused (AnnouncementRejected), one row per device and sequence;
-- a rejection repeated on reconnect updates its row. Removed with the device.
CREATE TABLE rejections (
    node_id     TEXT NOT NULL REFERENCES devices (node_id) ON DELETE CASCADE,
    sequence    INTEGER NOT NULL CHECK (sequence >= 0),  -- 0: the announcement was unreadable
    code        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    rejected_at REAL NOT NULL,
    PRIMARY KEY (node_id, sequence)
) WITHOUT ROWID;
