"""The revocations an agent has verified, kept across restarts.

The coordinator hands them over (fleet.protocol.messages.Revocations); the agent verifies
each against its own trust roots before believing it, so a coordinator can neither invent a
revocation nor, once the agent has seen one, make it forget it by restarting the agent.
Written like the state file: temp file, fsync, rename, fsync of the directory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path

from fleet.capability import BadRevocation, RevocationList, SignedRevocation
from fleet.durable import replace_durably
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol.messages import Revocations
from fleet.wire import WireError, decode, encode

log = get_logger("fleet.agent")

REVOCATIONS_FILE = "revocations.bin"


class RevocationStore:
    def __init__(self, directory: Path | None, trust_roots: Collection[NodeId]) -> None:
        self.path = directory / REVOCATIONS_FILE if directory is not None else None
        self.trust_roots = trust_roots
        self.known = RevocationList()

    def load(self, now: float) -> None:
        if self.path is None:
            return
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("agent_revocations_unreadable", path=str(self.path), error=str(exc))
            return
        try:
            saved = decode(data, Revocations)
        except WireError as exc:
            log.warning("agent_revocations_unreadable", path=str(self.path), error=str(exc))
            return
        for problem in self.known.add_all(saved.revocations, self.trust_roots, now):
            log.warning("agent_revocation_ignored", reason=str(problem))

    def ids(self) -> frozenset[bytes]:
        return self.known.ids()

    def add(self, revocations: Iterable[SignedRevocation], now: float) -> int:
        """Verify and keep new revocations; return how many were new."""
        before = len(self.known)
        for item in revocations:
            try:
                statement = self.known.add(item, self.trust_roots, now)
            except BadRevocation as exc:
                log.warning("agent_revocation_refused", reason=str(exc))
                continue
            log.info("agent_revocation", certificate=statement.certificate.hex())
        added = len(self.known) - before
        if added:
            self._save()
        return added

    def _save(self) -> None:
        if self.path is None:
            return
        replace_durably(self.path, encode(Revocations(revocations=tuple(self.known.signed()))))
