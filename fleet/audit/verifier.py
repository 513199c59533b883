"""Verifying an audit log: the hash chain, every actor's signature, the signed checkpoints.

Works on entries from anywhere (the coordinator's database, an export file), needing only
the coordinator's node id and, to check authority, the trust roots. Checks, entry by entry:
1. ids run 1, 2, 3... and each entry links to the one before (nothing removed or reordered);
2. each entry's content matches its hash (nothing edited);
3. an accepted entry carries a request signed (Tag.ADMIN_REQUEST) by its actor and
   addressed to this coordinator, and the `authorize` hook (if given) accepts it: the
   coordinator cannot invent an accepted action nobody signed;
then every checkpoint must be the coordinator's signature over an entry that exists and has
exactly that hash (a rewritten or truncated log no longer matches an earlier checkpoint).
The first failure raises AuditVerifyError naming the entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from fleet.audit.checkpoint import BadCheckpoint, Checkpoint, open_checkpoint
from fleet.audit.record import GENESIS, AuditEntry, Outcome, entry_hash
from fleet.identity import NodeId
from fleet.protocol.messages import AdminRequest, EnrollToken
from fleet.protocol.permissions import ENROLL_ACTION
from fleet.wire import SignedEnvelope, Tag, WireError, decode, encode, verify_envelope

# Called for each accepted entry with its verified signer and request; returns a problem
# (why this actor had no authority for it) or None.
Authorize = Callable[[AuditEntry, NodeId, AdminRequest], str | None]


class AuditVerifyError(Exception):
    """The log is not intact; `entry` is the first bad entry's id (None: not entry-specific)."""

    def __init__(self, entry: int | None, problem: str) -> None:
        super().__init__(f"entry {entry}: {problem}" if entry is not None else problem)
        self.entry = entry
        self.problem = problem


@dataclass(frozen=True)
class AuditReport:
    entries: int
    accepted: int
    refused: int
    checkpoints: int
    sealed: int  # entries covered by the newest valid checkpoint

    def summary(self) -> str:
        unsealed = self.entries - self.sealed
        return (
            f"audit log intact: {self.entries} entries ({self.accepted} accepted, "
            f"{self.refused} refused), {self.checkpoints} checkpoints, "
            f"{self.sealed} entries sealed by the newest checkpoint"
            + (f", {unsealed} after it" if unsealed else "")
        )


def signed_request(entry: AuditEntry) -> tuple[NodeId, AdminRequest]:
    """The verified signer and request of an entry; ValueError says why there is none.

    An enrollment (action `enroll`) carries the admin's enrollment token instead, signed
    with Tag.ENROLL_TOKEN; it is read as the request it stands for (addressee, time, chain
    and the token as body), so it is checked like every other accepted entry.
    """
    try:
        envelope = decode(entry.request, SignedEnvelope)
        if entry.action == ENROLL_ACTION.name:
            signer, token = verify_envelope(envelope, Tag.ENROLL_TOKEN, EnrollToken)
            return signer, AdminRequest(
                coordinator=token.coordinator,
                issued_at=token.issued_at,
                nonce=token.token_id,
                body=encode(token),
                chain=token.chain,
            )
        return verify_envelope(envelope, Tag.ADMIN_REQUEST, AdminRequest)
    except WireError as exc:
        raise ValueError(f"its request is not a valid signed admin request: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"its request is malformed: {exc}") from None


def walk_chain(entries: Iterable[AuditEntry]) -> Iterator[AuditEntry]:
    """The entries, each yielded once its id, link and hash check out (checks 1 and 2);
    the first break raises AuditVerifyError naming the entry. The one walk of the chain:
    the verifier and the coordinator's own check both use it."""
    prev = GENESIS
    for expected, entry in enumerate(entries, start=1):
        if entry.id != expected:
            what = "missing" if entry.id > expected else "out of order"
            raise AuditVerifyError(
                expected, f"{what}: found entry {entry.id} where entry {expected} belongs"
            )
        if entry.prev_hash != prev:
            raise AuditVerifyError(entry.id, f"does not link to entry {entry.id - 1}")
        if entry_hash(entry) != entry.hash:
            raise AuditVerifyError(entry.id, "content does not match its hash (edited)")
        yield entry
        prev = entry.hash


def verify_log(
    entries: Sequence[AuditEntry],
    checkpoints: Sequence[SignedEnvelope],
    coordinator: NodeId,
    *,
    authorize: Authorize | None = None,
) -> AuditReport:
    accepted = refused = 0
    for entry in walk_chain(entries):
        if entry.outcome == Outcome.ACCEPTED:
            accepted += 1
            _check_accepted(entry, coordinator, authorize)
        elif entry.outcome == Outcome.REFUSED:
            refused += 1
        else:
            raise AuditVerifyError(entry.id, f"unknown outcome {entry.outcome[:40]!r}")
    sealed = 0
    for index, envelope in enumerate(checkpoints, start=1):
        try:
            checkpoint = open_checkpoint(envelope, coordinator)
        except BadCheckpoint as exc:
            raise AuditVerifyError(None, f"checkpoint {index}: {exc}") from None
        _check_sealed(entries, checkpoint, verified_up_to=sealed)
        sealed = max(sealed, checkpoint.sequence)
    return AuditReport(len(entries), accepted, refused, len(checkpoints), sealed)


def _check_accepted(entry: AuditEntry, coordinator: NodeId, authorize: Authorize | None) -> None:
    try:
        signer, request = signed_request(entry)
    except ValueError as exc:
        raise AuditVerifyError(entry.id, f"accepted, but {exc}") from None
    if str(signer) != entry.actor:
        raise AuditVerifyError(
            entry.id, f"accepted, but its request is signed by {signer}, not the actor"
        )
    if request.coordinator != coordinator:
        raise AuditVerifyError(
            entry.id, f"accepted, but its request is addressed to {request.coordinator}"
        )
    if authorize is not None:
        problem = authorize(entry, signer, request)
        if problem is not None:
            raise AuditVerifyError(entry.id, f"accepted without authority: {problem}")


def _check_sealed(
    entries: Sequence[AuditEntry], checkpoint: Checkpoint, *, verified_up_to: int
) -> None:
    seq = checkpoint.sequence
    if seq > len(entries):
        raise AuditVerifyError(
            len(entries) + 1,
            f"missing: a checkpoint signed by the coordinator covers {seq} entries, "
            f"the log has {len(entries)} (entries deleted)",
        )
    if entries[seq - 1].hash != checkpoint.head:
        first = min(verified_up_to, seq - 1) + 1
        raise AuditVerifyError(
            first,
            f"entries {first}..{seq} were rewritten: entry {seq} does not match the "
            "coordinator's signed checkpoint",
        )
