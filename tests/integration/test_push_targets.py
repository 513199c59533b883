"""Announcements v3 end to end: a push names its devices by tag and by explicit ids (a Merkle
root the admin signs, a proof per device), and a real agent accepts only what targets it.

1. A compromised coordinator (a stand-in on the real mesh) forwards a genuine, admin-signed
   announcement to an agent outside its explicit ids: with another member's real proof, with
   a proof that includes the agent but under another root, truncated, without a proof, and
   with a selector the agent's own tags do not meet. The agent process refuses each and
   activates nothing; the same announcement with the agent's own proof is taken up.
2. Through every real process (relay, coordinator, agents with chroot Nix stores, a binary
   cache over HTTP, fleetctl): a push to a tag and an explicit id, then to a short id, is
   applied by the targeted agents only.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet.identity import Identity, NodeId
from fleet.mesh import Endpoint
from fleet.protocol import alpn
from fleet.protocol.messages import (
    AgentState,
    Announcement,
    AnnouncementRejected,
    Deliver,
    DeliverV1,
    Hello,
    StatusReport,
    TargetProof,
    Welcome,
)
from fleet.protocol.stream import recv_message, send_message
from fleet.protocol.targeting import target_tree
from fleet.vocabulary import Action
from fleet.wire import ByteReader, Message, SignedEnvelope, Tag, sign_envelope
from harness.fleetlab import FleetLab
from harness.nixlab import switch_log_lines
from tests.conftest import NixCache, Systems
from tests.integration.test_agent_process import AgentRig, accept_agent

T = 30.0
PATH = "/nix/store/" + "b" * 32 + "-nixos-system-targets"
MEMBERS = tuple(Identity.generate().node_id for _ in range(6))


def signed(
    admin: Identity, sequence: int, devices: tuple[NodeId, ...], selector: tuple[str, ...] = ()
) -> SignedEnvelope:
    tree = target_tree(devices)
    now = time.time()
    ann = Announcement(
        sequence=sequence, selector=selector, devices_root=tree.root, devices_count=tree.count,
        store_path=PATH, substituters=(), action=Action.SWITCH, issued_at=now - 1,
        valid_until=now + 600,
    )  # fmt: skip
    return sign_envelope(admin, Tag.ANNOUNCEMENT, ann)


async def next_answer(reader: ByteReader, sequence: int) -> AnnouncementRejected | StatusReport:
    """The agent's refusal of `sequence`, or its first report of working on it."""
    while True:
        message: Message = await recv_message(reader, timeout=T)
        if isinstance(message, AnnouncementRejected):
            return message
        assert isinstance(message, StatusReport), message
        if message.sequence == sequence:
            return message
        assert message.state is AgentState.IDLE, message  # nothing else ever starts


async def test_an_agent_outside_the_ids_cannot_be_tricked_into_a_push(tmp_path: Path) -> None:
    coordinator = Identity.generate()
    cache = NixCache(url="http://127.0.0.1:9", directory=tmp_path)
    async with Endpoint(coordinator, bind=("127.0.0.1", 0), alpns=[alpn.AGENT]) as ep:
        host, port = ep.bound_address
        rig = AgentRig(
            tmp_path, f"{coordinator.node_id}@{host}:{port}", cache, "k-1:" + "A" * 43 + "="
        )
        rig.argv += ["--tag", "lab"]
        me = NodeId.parse(rig.node_id)
        with rig.running():
            conn, reader, writer = await accept_agent(ep)
            hello = await recv_message(reader, Hello, timeout=T)
            assert hello.tags == ("lab",)
            await send_message(writer, Welcome(approved=True, name="lab-1"), timeout=T)

            outside = signed(rig.admin, 1, MEMBERS)  # genuine, but not for this device
            tree = target_tree(MEMBERS)
            with_me = target_tree((*MEMBERS, me))  # a tree the admin never signed
            mine = with_me.proofs[me]
            attempts: list[Deliver | DeliverV1] = [
                *(Deliver(announcement=outside, proof=tree.proofs[m]) for m in MEMBERS[:3]),
                Deliver(announcement=outside, proof=mine),
                Deliver(announcement=outside, proof=TargetProof(index=mine.index, hashes=())),
                Deliver(announcement=outside, proof=None),
                DeliverV1(announcement=outside),
                Deliver(announcement=signed(rig.admin, 1, (), ("kiosk",)), proof=None),
            ]
            for attempt in attempts:
                await send_message(writer, attempt, timeout=T)
                answer = await next_answer(reader, 1)
                assert isinstance(answer, AnnouncementRejected), answer
                assert (answer.sequence, answer.code) == (1, "not-for-us"), answer

            # The control: the same kind of announcement, naming this device, is taken up.
            named = signed(rig.admin, 2, (*MEMBERS, me))
            proof = target_tree((*MEMBERS, me)).proofs[me]
            await send_message(writer, Deliver(announcement=named, proof=proof), timeout=T)
            answer = await next_answer(reader, 2)
            assert isinstance(answer, StatusReport), answer
            assert answer.state is AgentState.DOWNLOADING
            await conn.close()
    assert switch_log_lines(rig.switch_log) == []


@pytest.mark.nix
async def test_a_push_to_a_tag_and_to_ids_applies_on_the_targeted_agents_only(
    lab: FleetLab, nix_systems: Systems
) -> None:
    kiosks = [lab.add_agent(f"kiosk-{i}", tags=("lab", "kiosk")) for i in (1, 2)]
    office = lab.add_agent("office", tags=("lab", "office"))
    router = lab.add_agent("router", tags=("lab",))
    await lab.start_agents(*kiosks, office, router)
    await lab.register(*kiosks, tags=("lab", "kiosk"))
    await lab.register(office, tags=("lab", "office"))
    await lab.register(router, tags=("lab",))
    v1, v2 = nix_systems.v1.path, nix_systems.v2.path

    push = await lab.fleetctl("push", v1, "--to", "tag:kiosk", "--to", "router", "--wait")
    assert push.code == 0, push
    for agent in (*kiosks, router):
        assert f"{agent.name}: applied" in push.out, push
        assert await agent.profile() == v1
        assert agent.switches() == [f"switch {v1}"]
    assert await office.profile() is None
    assert office.switches() == []

    # A short id is an explicit id too: only the office device is under the new root.
    push = await lab.fleetctl("push", v2, "--to", office.node_id.short(), "--wait")
    assert push.code == 0, push
    assert await office.profile() == v2
    assert office.switches() == [f"switch {v2}"]
    for agent in (*kiosks, router):
        assert await agent.profile() == v1
        assert agent.switches() == [f"switch {v1}"]
    rows = await lab.status()
    assert rows["office"]["desired"]["store_path"] == v2
    assert rows["router"]["desired"]["store_path"] == v1
    assert all(row["rejection"] is None for row in rows.values()), rows
