-- fleet coordinator state, version 5: announcements whose size does not grow with the fleet
-- (issue 12). An Announcement v3 signs a selector and a Merkle root over its explicit ids;
-- each explicit device is handed its inclusion proof next to the envelope.

-- The same push as an Announcement v2 (encoded fleet.envelope, exactly as signed), for agents
-- older than Hello v4. NULL: the push has none (such agents get nothing from it), or the
-- `envelope` column is itself an Announcement v2 (a push from fleetctl before version 3).
ALTER TABLE announcements ADD COLUMN legacy BLOB;

-- The device's TargetProof (encoded) under the announcement's signed root. NULL: targeted by
-- the selector only, or the announcement lists its devices itself (version 2).
ALTER TABLE announcement_devices ADD COLUMN proof BLOB;
