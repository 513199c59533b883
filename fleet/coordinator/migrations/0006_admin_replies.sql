-- fleet coordinator state, version 5: idempotent admin requests (issue 12).

-- A request whose answer was lost is sent again, byte for byte (same nonce): the coordinator
-- answers it with the reply it gave the first time instead of refusing it as a replay. The
-- digest tells that very request from another one reusing its nonce (still a replay); the
-- reply is kept for requests that were carried out or refused, in the transaction that did it.
ALTER TABLE admin_nonces ADD COLUMN request_sha256 BLOB;
ALTER TABLE admin_nonces ADD COLUMN reply BLOB;
