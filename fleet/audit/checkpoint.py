"""Checkpoints: the coordinator's signature over the head of its audit log.

A checkpoint says "my log has `sequence` entries and the last one hashes to `head`". The
hashes alone are unkeyed, so someone who edits the SQLite file can recompute every hash after
the edit; a signed checkpoint taken earlier then no longer matches, and a deleted tail leaves
a checkpoint pointing past the end. Copies of checkpoints held elsewhere (exports, admins'
machines) protect against a coordinator that rewrites its own history.
"""

from __future__ import annotations

from fleet.identity import Identity, NodeId
from fleet.wire import Message, SignedEnvelope, Tag, WireError, sign_envelope, verify_envelope


class Checkpoint(Message, type="fleet.audit.checkpoint", version=1):
    coordinator: NodeId
    sequence: int  # id of the last entry covered
    head: bytes  # that entry's hash
    time: float

    def __post_init__(self) -> None:
        if self.sequence < 1:
            raise ValueError("a checkpoint covers at least one entry")
        if len(self.head) != 32:
            raise ValueError("a checkpoint head is a 32-byte hash")


class BadCheckpoint(Exception):
    """A checkpoint that is not the named coordinator's signature."""


def sign_checkpoint(identity: Identity, sequence: int, head: bytes, time: float) -> SignedEnvelope:
    checkpoint = Checkpoint(coordinator=identity.node_id, sequence=sequence, head=head, time=time)
    return sign_envelope(identity, Tag.AUDIT_CHECKPOINT, checkpoint)


def open_checkpoint(envelope: SignedEnvelope, coordinator: NodeId) -> Checkpoint:
    try:
        signer, checkpoint = verify_envelope(envelope, Tag.AUDIT_CHECKPOINT, Checkpoint)
    except WireError as exc:
        raise BadCheckpoint(f"checkpoint does not verify: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise BadCheckpoint(f"checkpoint is malformed: {exc}") from None
    if signer != coordinator or checkpoint.coordinator != coordinator:
        raise BadCheckpoint(
            f"checkpoint is signed by {signer.short()}, not by the coordinator "
            f"{coordinator.short()}"
        )
    return checkpoint
