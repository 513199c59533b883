"""Which node ids the coordinator treats as admins before they say anything: they may use the
mesh's reserved connection and handshake slots, so fleetctl gets in while a herd of agents
fills the ordinary ones.

Known from what the coordinator already trusts or has verified: the trust roots, the
subjects of every certificate it stored (grants and the chains of past requests), and every
node that made an authenticated request in this run. Bounded, so nothing a stranger sends
can grow it; a stranger cannot get in, since only verified requests add to it. An admin not
known yet still connects through the ordinary slots, as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from fleet.coordinator import trust
from fleet.coordinator.announcements import Reader
from fleet.identity import NodeId

MAX_KNOWN_ADMINS = 4096


class KnownAdmins:
    def __init__(self, roots: Iterable[NodeId], limit: int = MAX_KNOWN_ADMINS) -> None:
        self._roots = frozenset(roots)
        self._seen: OrderedDict[NodeId, None] = OrderedDict()  # oldest first
        self.limit = limit

    async def load(self, db: Reader) -> None:
        """Remember the subjects of the certificates stored so far (newest first)."""
        for node in reversed(await trust.certificate_subjects(db, self.limit)):
            self.add(node)

    def add(self, node: NodeId) -> None:
        """A node whose request was authenticated (or that holds a stored certificate)."""
        if node in self._roots:
            return
        self._seen[node] = None
        self._seen.move_to_end(node)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)

    def __contains__(self, node: object) -> bool:
        return node in self._roots or node in self._seen

    def __len__(self) -> int:
        return len(self._roots) + len(self._seen)
