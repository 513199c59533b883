"""The agent as an audit witness: it keeps the coordinator's last signed checkpoint and reports it.

The coordinator hands out its newest checkpoint (fleet.protocol.messages.AuditCheckpoint);
the agent checks the coordinator's signature, and that the new checkpoint does not contradict
the one it holds: the same index must have the same head hash, and an index never goes back.
(A higher index cannot be checked here without the entries in between: the agent keeps the
newer one.) It reports what it holds in every Hello, and, when a checkpoint arrives, what it
held before and what it holds now (WitnessReport), so a coordinator whose log was rewritten
after the agent saw it is handed back its own signature over the old head, which `fleetctl
audit verify` checks against the log. Kept across restarts like the revocations (fsync'd).
"""

from __future__ import annotations

from pathlib import Path

from fleet.audit import BadCheckpoint, Checkpoint, open_checkpoint
from fleet.durable import replace_durably
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol.messages import WitnessReport
from fleet.wire import SignedEnvelope, WireError, decode, encode

log = get_logger("fleet.agent")

CHECKPOINT_FILE = "audit-checkpoint.bin"


class CheckpointWitness:
    """The one checkpoint this agent holds (None: never received one, or no coordinator id)."""

    def __init__(self, directory: Path | None, coordinator: NodeId | None) -> None:
        self.path = directory / CHECKPOINT_FILE if directory is not None else None
        self.coordinator = coordinator
        self.held: SignedEnvelope | None = None
        self._checkpoint: Checkpoint | None = None

    def load(self) -> None:
        if self.path is None or self.coordinator is None:
            return
        try:
            envelope = decode(self.path.read_bytes(), SignedEnvelope)
            checkpoint = open_checkpoint(envelope, self.coordinator)
        except FileNotFoundError:
            return
        except (OSError, WireError, BadCheckpoint) as exc:
            # Another coordinator's, or damaged: it cannot witness anything for this one.
            log.warning("agent_checkpoint_unreadable", path=str(self.path), error=str(exc))
            return
        self.held, self._checkpoint = envelope, checkpoint

    def receive(self, envelope: SignedEnvelope) -> list[WitnessReport]:
        """A checkpoint from the coordinator; the reports to send back (held, then new)."""
        if self.coordinator is None:
            return []
        try:
            new = open_checkpoint(envelope, self.coordinator)
        except BadCheckpoint as exc:
            log.warning("agent_checkpoint_refused", reason=str(exc))
            return []
        old, held = self._checkpoint, self.held
        reports = [WitnessReport(checkpoint=held)] if held is not None else []
        if old is not None and (
            new.sequence < old.sequence or (new.sequence == old.sequence and new.head != old.head)
        ):
            log.error(
                "agent_audit_fork",
                held_sequence=old.sequence,
                held_head=old.head.hex()[:16],
                sequence=new.sequence,
                head=new.head.hex()[:16],
                detail="the coordinator's new checkpoint contradicts the one this device holds",
            )
            return reports  # keep (and report) the old one: it is the evidence
        if old is not None and new.sequence == old.sequence:
            return reports
        self.held, self._checkpoint = envelope, new
        if self.path is not None:
            replace_durably(self.path, encode(envelope))
        log.info("agent_checkpoint", sequence=new.sequence)
        return [*reports, WitnessReport(checkpoint=envelope)]
