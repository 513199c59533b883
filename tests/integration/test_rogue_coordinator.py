"""A compromised coordinator cannot make a real agent install anything no authorized admin
signed for it: a stand-in coordinator on the real mesh delivers announcements signed by an
unauthorized key, by a key outside its scope, and by a key whose certificate it was told
is revoked; the agent process refuses each, and nothing is ever activated."""

from __future__ import annotations

import time
from pathlib import Path

from fleet.capability import EMPTY_CHAIN, Chain, Scope, certificate_id, revoke
from fleet.identity import Identity, NodeId
from fleet.mesh import Endpoint
from fleet.protocol import alpn
from fleet.protocol.messages import (
    AgentState,
    AnnouncementRejected,
    AnnouncementV2,
    DeliverV1,
    Hello,
    Revocations,
    StatusReport,
    Welcome,
)
from fleet.protocol.stream import recv_message, send_message
from fleet.vocabulary import Action
from fleet.wire import ByteReader, Message, Tag, sign_envelope
from harness.nixlab import switch_log_lines
from tests.capability_kit import make_org
from tests.conftest import NixCache
from tests.integration.test_agent_process import AgentRig, accept_agent

T = 30.0
PATH = "/nix/store/" + "e" * 32 + "-nixos-system-evil"


def deliver(device: str, sequence: int, who: Identity, chain: Chain) -> DeliverV1:
    now = time.time()
    ann = AnnouncementV2(
        sequence=sequence, devices=(NodeId.parse(device),), targets=("lab-1",),
        store_path=PATH, substituters=(), action=Action.SWITCH,
        issued_at=now - 1, valid_until=now + 600, chain=chain,
    )  # fmt: skip
    return DeliverV1(announcement=sign_envelope(who, Tag.ANNOUNCEMENT, ann))


async def next_rejection(reader: ByteReader) -> AnnouncementRejected:
    while True:
        message: Message = await recv_message(reader, timeout=T)
        if isinstance(message, AnnouncementRejected):
            return message
        assert isinstance(message, StatusReport)
        assert message.state is AgentState.IDLE, message  # nothing ever starts


async def test_agent_refuses_what_a_rogue_coordinator_delivers(tmp_path: Path) -> None:
    org = make_org(
        now=time.time(), lead_scope=Scope.of(tags=["lab", "prod"]), ci_scope=Scope.of(tags=["prod"])
    )
    coordinator = Identity.generate()
    cache = NixCache(url="http://127.0.0.1:9", directory=tmp_path)
    async with Endpoint(coordinator, bind=("127.0.0.1", 0), alpns=[alpn.AGENT]) as ep:
        host, port = ep.bound_address
        rig = AgentRig(
            tmp_path, f"{coordinator.node_id}@{host}:{port}", cache, "k-1:" + "A" * 43 + "="
        )
        at = rig.argv.index("--trust-root")
        rig.argv[at + 1] = str(org.root.node_id)
        rig.argv += ["--tag", "lab"]
        with rig.running():
            conn, reader, writer = await accept_agent(ep)
            await recv_message(reader, Hello, timeout=T)
            await send_message(writer, Welcome(approved=True, name="lab-1"), timeout=T)

            # 1. signed by a key that is no admin at all (the coordinator's own, say)
            await send_message(writer, deliver(rig.node_id, 1, coordinator, EMPTY_CHAIN), timeout=T)
            rejected = await next_rejection(reader)
            assert rejected.sequence == 1
            assert "not a trust root" in rejected.reason

            # 2. a real CI key of the organization, but this device is outside its scope
            await send_message(writer, deliver(rig.node_id, 2, org.ci, org.ci_chain), timeout=T)
            rejected = await next_rejection(reader)
            assert rejected.sequence == 2
            assert "outside the scope tag:prod" in rejected.reason

            # 3. the lead's certificate is revoked (by the root); the coordinator "forgets"
            #    that and delivers the lead's announcement anyway
            lead_cert = certificate_id(org.lead_chain.certificates[-1])
            revocation = revoke(org.root, EMPTY_CHAIN, lead_cert, reason="lost", now=time.time())
            await send_message(writer, Revocations(revocations=(revocation,)), timeout=T)
            await send_message(writer, deliver(rig.node_id, 3, org.lead, org.lead_chain), timeout=T)
            rejected = await next_rejection(reader)
            assert rejected.sequence == 3
            assert "revoked" in rejected.reason
            await conn.close()

        # Restarted, the agent still knows the revocation although nobody resends it.
        with rig.running():
            conn, reader, writer = await accept_agent(ep)
            await recv_message(reader, Hello, timeout=T)
            await send_message(writer, Welcome(approved=True, name="lab-1"), timeout=T)
            await send_message(writer, deliver(rig.node_id, 4, org.lead, org.lead_chain), timeout=T)
            rejected = await next_rejection(reader)
            assert "revoked" in rejected.reason
            await conn.close()
    assert switch_log_lines(rig.switch_log) == []
