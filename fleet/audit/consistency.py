"""Consistency of a log with checkpoints kept elsewhere: the audit witnesses.

The log is a linear hash chain, so a checkpoint (index, head hash) seen earlier is extended
by a later log exactly when the entry at that index still has that hash: every entry before
it is then fixed by the chain (as in Certificate Transparency, where the proof is a Merkle
path; here the entries themselves are the proof). Whoever kept the checkpoint (fleetctl's
state directory, an agent, an export) is its witness; a coordinator that rewrote its log,
recomputed every later hash and deleted its own checkpoints still cannot match a copy that
it no longer controls. Pure functions: the caller fetches and stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fleet.audit.checkpoint import BadCheckpoint, Checkpoint, open_checkpoint
from fleet.audit.record import AuditEntry
from fleet.audit.verifier import AuditVerifyError
from fleet.identity import NodeId
from fleet.wire import SignedEnvelope


@dataclass(frozen=True)
class Witnessed:
    """A checkpoint someone other than the coordinator kept, and who (for messages)."""

    source: str  # e.g. "the checkpoint this machine remembered", "device kiosk-1"
    envelope: SignedEnvelope


def short_hash(digest: bytes) -> str:
    return digest.hex()[:16]


def check_extends(
    entries: Sequence[AuditEntry], witnessed: Witnessed, coordinator: NodeId
) -> Checkpoint:
    """The witnessed checkpoint, if the log extends it; else AuditVerifyError naming the index
    and both hashes (or the missing entries)."""
    try:
        checkpoint = open_checkpoint(witnessed.envelope, coordinator)
    except BadCheckpoint as exc:
        raise AuditVerifyError(None, f"{witnessed.source}: {exc}") from None
    index = checkpoint.sequence
    if index > len(entries):
        raise AuditVerifyError(
            len(entries) + 1,
            f"missing: {witnessed.source} holds the coordinator's signed checkpoint of "
            f"{index} entries (head {short_hash(checkpoint.head)}), the log has "
            f"{len(entries)} (entries deleted)",
        )
    entry = entries[index - 1]
    if entry.hash != checkpoint.head:
        raise AuditVerifyError(
            index,
            f"rewritten: its hash is {short_hash(entry.hash)} but {witnessed.source} holds the "
            f"coordinator's signed checkpoint saying {short_hash(checkpoint.head)} "
            "(the log is not an extension of what was seen before)",
        )
    return checkpoint


def check_witnesses(
    entries: Sequence[AuditEntry], witnesses: Sequence[Witnessed], coordinator: NodeId
) -> list[Checkpoint]:
    """Every witnessed checkpoint must be extended by the log; the first that is not fails."""
    return [check_extends(entries, w, coordinator) for w in witnesses]


def check_prefix(live: Sequence[AuditEntry], kept: Sequence[AuditEntry], source: str) -> None:
    """A log kept elsewhere (an export) must be a prefix of the live one, hash for hash."""
    for kept_entry, live_entry in zip(kept, live, strict=False):
        if kept_entry.id != live_entry.id or kept_entry.hash != live_entry.hash:
            raise AuditVerifyError(
                kept_entry.id,
                f"rewritten: its hash is {short_hash(live_entry.hash)} in the live log but "
                f"{short_hash(kept_entry.hash)} in {source}",
            )
    if len(kept) > len(live):
        raise AuditVerifyError(
            len(live) + 1,
            f"missing: {source} has {len(kept)} entries, the live log {len(live)} "
            "(entries deleted)",
        )


def newest(checkpoints: Sequence[SignedEnvelope], coordinator: NodeId) -> SignedEnvelope | None:
    """The valid checkpoint with the highest index (the one worth remembering)."""
    best: tuple[int, SignedEnvelope] | None = None
    for envelope in checkpoints:
        try:
            sequence = open_checkpoint(envelope, coordinator).sequence
        except BadCheckpoint:
            continue
        if best is None or sequence > best[0]:
            best = (sequence, envelope)
    return best[1] if best is not None else None
