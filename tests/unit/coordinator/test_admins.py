"""Known admins (who may use the mesh's reserved slots): the trust roots, the subjects of
stored certificates, and authenticated requesters; bounded, oldest forgotten first."""

from __future__ import annotations

from pathlib import Path

from fleet.coordinator import trust
from fleet.coordinator.admins import KnownAdmins
from fleet.coordinator.database import Database
from fleet.identity import Identity
from tests.capability_kit import NOW, make_org


async def test_roots_and_subjects_of_stored_certificates_are_known(tmp_path: Path) -> None:
    org = make_org()
    db = await Database.open(tmp_path / "state.db")
    try:
        async with db.transaction() as tx:
            await trust.remember_chain(tx, org.ci_chain, NOW)  # root -> lead -> ci
        admins = KnownAdmins(org.roots)
        assert org.lead.node_id not in admins
        await admins.load(db)
    finally:
        await db.close()
    for known in (org.root, org.lead, org.ci):
        assert known.node_id in admins
    assert Identity.generate().node_id not in admins
    assert len(admins) == 3


def test_authenticated_requesters_are_added_and_the_oldest_forgotten_beyond_the_bound() -> None:
    root = Identity.generate().node_id
    admins = KnownAdmins([root], limit=2)
    a, b, c = (Identity.generate().node_id for _ in range(3))
    admins.add(a)
    admins.add(b)
    admins.add(a)  # seen again: now the newest
    admins.add(c)
    assert a in admins
    assert c in admins
    assert b not in admins
    admins.add(root)  # a root is always known and takes no room
    assert root in admins
    assert len(admins) == 3
