"""Organizations for tests: a root, a team lead with delegation, a CI key, chains between them."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.capability import EMPTY_CHAIN, Chain, Permission, Scope, issue
from fleet.identity import Identity, NodeId

DAY = 86400.0
NOW = 1_800_000_000.0


@dataclass(frozen=True)
class Org:
    root: Identity
    lead: Identity
    ci: Identity
    lead_chain: Chain
    ci_chain: Chain

    @property
    def roots(self) -> frozenset[NodeId]:
        return frozenset({self.root.node_id})


def make_org(
    *,
    now: float = NOW,
    lead_scope: Scope | None = None,
    ci_scope: Scope | None = None,
) -> Org:
    """root -> lead (push, devices, grant, read; delegate; 30 d) -> ci (push; 7 d)."""
    root, lead, ci = Identity.generate(), Identity.generate(), Identity.generate()
    roots = {root.node_id}
    lead_chain = issue(
        root,
        EMPTY_CHAIN,
        roots,
        lead.node_id,
        [Permission.PUSH, Permission.DEVICES, Permission.GRANT, Permission.READ],
        lead_scope or Scope.of(tags=["prod", "lab"]),
        not_before=now - DAY,
        not_after=now + 30 * DAY,
        may_delegate=True,
        now=now,
    )
    ci_chain = issue(
        lead,
        lead_chain,
        roots,
        ci.node_id,
        [Permission.PUSH],
        ci_scope or Scope.of(tags=["prod"]),
        not_before=now - DAY,
        not_after=now + 7 * DAY,
        may_delegate=False,
        now=now,
    )
    return Org(root, lead, ci, lead_chain, ci_chain)
