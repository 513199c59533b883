"""Enrollment tokens and bulk adds at the coordinator, driven in memory (real SQLite).

A token registers an unknown device with its tags on its Hello, once per use, audited under
its signer and verifiable offline; an expired, foreign, out-of-scope, revoked or used-up
token leaves the device pending and is audited under the device's key, within the refusal
rate limits however many devices try. A batch is one transaction: all devices, or none.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleet.audit import AuthorityReplay, verify_log
from fleet.capability import EMPTY_CHAIN, Scope, certificate_id, revoke
from fleet.coordinator import audit, registry
from fleet.coordinator.database import Database
from fleet.coordinator.refusals import RefusalLimits
from fleet.coordinator.service import AdminResult, CoordinatorService
from fleet.identity import Identity, NodeId
from fleet.protocol.admin import make_admin_request
from fleet.protocol.enroll_token import make_enroll_token
from fleet.protocol.messages import (
    AgentState,
    DeviceAddBatch,
    DeviceBatchAdded,
    DeviceEntry,
    EnrollToken,
    EnrollTokenRevoke,
    ErrorReply,
    Hello,
    RevokeRequest,
    SystemState,
    Welcome,
)
from fleet.wire import Message, SignedEnvelope, decode, encode
from tests.capability_kit import DAY, NOW, Org, make_org


class Link:
    def __init__(self, node: NodeId) -> None:
        self.remote_id = node
        self.path = "direct"
        self.sent: list[Message] = []

    def send(self, payload: bytes) -> None:
        self.sent.append(decode(payload))

    def close(self, reason: str) -> None:
        pass

    def welcome(self) -> Welcome:
        return next(m for m in self.sent if isinstance(m, Welcome))


def hello(token: SignedEnvelope | None) -> Hello:
    return Hello(
        agent_version="test",
        current=SystemState(store_path=None, generation=None),
        last_sequence=0,
        state=AgentState.IDLE,
        state_since=0,
        tags=("kiosk",),
        enroll_token=token,
    )


class Rig:
    def __init__(self, db: Database, org: Org, limits: RefusalLimits | None = None) -> None:
        self.org = org
        self.coordinator = Identity.generate()
        self.now = NOW
        self.service = CoordinatorService(
            db,
            self.coordinator.node_id,
            org.roots,
            clock=lambda: self.now,
            refusal_limits=limits,
        )

    def token(self, *tags: str, uses: int = 1, lifetime: float = DAY, **kw: Any) -> SignedEnvelope:
        signer, chain = kw.get("signer", self.org.lead), kw.get("chain", self.org.lead_chain)
        coordinator = kw.get("coordinator", self.coordinator.node_id)
        return make_enroll_token(
            signer, coordinator, tags, lifetime=lifetime, uses=uses, chain=chain, now=self.now
        )

    async def hello(self, token: SignedEnvelope | None) -> tuple[NodeId, Link]:
        node = Identity.generate().node_id
        link = Link(node)
        await self.service.agent_hello(link, hello(token))
        return node, link

    async def request(self, body: Message, signer: Identity, chain: Any) -> AdminResult:
        env = make_admin_request(signer, self.coordinator.node_id, body, chain=chain, now=self.now)
        return await self.service.handle_admin(encode(env), signer.node_id)

    async def audit(self, action: str) -> list[tuple[str, str, dict[str, Any]]]:
        rows = await self.service.db.fetchall("SELECT * FROM audit ORDER BY id")
        entries = [audit.entry_of_row(r) for r in rows]
        return [(e.outcome, e.actor, json.loads(e.detail)) for e in entries if e.action == action]

    async def verify(self) -> None:
        rows = await self.service.db.fetchall("SELECT * FROM audit ORDER BY id")
        entries = [audit.entry_of_row(r) for r in rows]
        verify_log(entries, [], self.coordinator.node_id, authorize=AuthorityReplay(self.org.roots))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = await Database.open(tmp_path / "state.db")
    yield Rig(
        db, make_org(lead_scope=Scope.of(tags=["kiosk", "lab"]), ci_scope=Scope.of(tags=["kiosk"]))
    )
    await db.close()


async def test_a_valid_token_registers_approves_and_tags_the_device(rig: Rig) -> None:
    token = rig.token("kiosk", uses=2)
    node, link = await rig.hello(token)
    assert link.welcome().approved is True
    record = await registry.get(rig.service.db, node)
    assert record is not None
    assert (record.approved, record.tags) == (True, ("kiosk",))
    assert record.name is not None
    assert record.name.startswith("kiosk-")
    [(outcome, actor, detail)] = await rig.audit("enroll")
    assert (outcome, actor) == ("accepted", str(rig.org.lead.node_id))  # who signed it
    assert (detail["node_id"], detail["use"], detail["uses"]) == (str(node), 1, 2)
    await rig.verify()  # the token is the signed request of its entry

    _, link2 = await rig.hello(token)  # a second use is allowed ...
    assert link2.welcome().approved is True
    _, link3 = await rig.hello(token)  # ... a third is not
    assert not any(isinstance(m, Welcome) and m.approved for m in link3.sent)
    assert [(o, d.get("code")) for o, _, d in await rig.audit("enroll")] == [
        ("accepted", None),
        ("accepted", None),
        ("refused", "used-up"),
    ]


async def test_a_known_device_does_not_spend_the_token(rig: Rig) -> None:
    token = rig.token("kiosk")
    node, _ = await rig.hello(token)
    link = Link(node)
    await rig.service.agent_hello(link, hello(token))  # reconnects with the same token
    assert link.welcome().approved is True
    assert len(await rig.audit("enroll")) == 1  # no second use counted, nothing refused


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("expired", "expired"),
        ("other coordinator", "wrong-coordinator"),
        ("tags outside the scope", "unauthorized"),
        ("signer without devices", "unauthorized"),
        ("forged", "bad-signature"),
    ],
)
async def test_bad_tokens_leave_the_device_pending_and_are_audited(
    rig: Rig, case: str, code: str
) -> None:
    if case == "expired":
        token = rig.token("kiosk", lifetime=60)
        rig.now += 61
    elif case == "other coordinator":
        token = rig.token("kiosk", coordinator=Identity.generate().node_id)
    elif case == "tags outside the scope":
        token = rig.token("prod")
    elif case == "signer without devices":  # ci may push, not add devices
        token = rig.token("kiosk", signer=rig.org.ci, chain=rig.org.ci_chain)
    else:
        genuine = rig.token("kiosk")
        token = SignedEnvelope(
            signer=genuine.signer,
            tag=genuine.tag,
            payload=genuine.payload,
            signature=bytes(64),
        )
    node, link = await rig.hello(token)
    assert link.welcome().approved is False
    record = await registry.get(rig.service.db, node)
    assert record is not None
    assert record.approved is False
    [(outcome, actor, detail)] = await rig.audit("enroll")
    assert (outcome, actor, detail["code"]) == ("refused", str(node), code)
    await rig.verify()


async def test_a_token_of_a_revoked_signer_is_refused(rig: Rig) -> None:
    token = rig.token("kiosk", uses=5)
    lead_cert = certificate_id(rig.org.lead_chain.certificates[-1])
    signed = revoke(
        rig.org.root,
        EMPTY_CHAIN,
        lead_cert,
        revoked_chain=rig.org.lead_chain,
        reason="laptop lost",
        now=rig.now,
    )
    result = await rig.request(RevokeRequest(revocation=signed), rig.org.root, EMPTY_CHAIN)
    assert not isinstance(result.reply, ErrorReply), result.reply
    _, link = await rig.hello(token)
    assert link.welcome().approved is False
    [(_, _, detail)] = await rig.audit("enroll")
    assert detail["code"] == "unauthorized"
    assert "revoked" in detail["reason"]


async def test_a_revoked_token_enrolls_nobody_more(rig: Rig) -> None:
    token = rig.token("kiosk", uses=5)
    token_id = decode(token.payload, EnrollToken).token_id
    _, first = await rig.hello(token)
    assert first.welcome().approved is True
    lead, chain = rig.org.lead, rig.org.lead_chain
    for _ in range(2):  # revoking twice is harmless
        done = await rig.request(EnrollTokenRevoke(token_id=token_id), lead, chain)
        assert not isinstance(done.reply, ErrorReply), done.reply
    _, second = await rig.hello(token)
    assert second.welcome().approved is False
    assert [(o, d.get("code")) for o, _, d in await rig.audit("enroll")] == [
        ("accepted", None),
        ("refused", "revoked"),
    ]
    assert [d["new"] for _, _, d in await rig.audit("enroll-token-revoke")] == [True, False]
    bad = await rig.request(EnrollTokenRevoke(token_id=b"short"), lead, chain)
    assert isinstance(bad.reply, ErrorReply)
    assert bad.reply.code == "invalid"
    await rig.verify()


async def test_a_flood_of_bad_tokens_grows_the_audit_log_by_a_bound(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "flood.db")
    limits = RefusalLimits(global_burst=20, global_rate=1e-9)
    try:
        rig = Rig(
            db,
            make_org(lead_scope=Scope.of(tags=["kiosk"]), ci_scope=Scope.of(tags=["kiosk"])),
            limits,
        )
        token = rig.token("prod")  # out of scope: refused each time
        for _ in range(200):
            await rig.hello(token)
        refused = [e for e in await rig.audit("enroll") if e[0] == "refused"]
        assert len(refused) == 20
        await rig.service.record_suppressed(force=True)
        [(_, _, summary)] = await rig.audit("refusals-suppressed")
        assert summary["suppressed"] == 180
    finally:
        await db.close()


def entries(*names: str, tags: tuple[str, ...] = ("kiosk",)) -> tuple[DeviceEntry, ...]:
    return tuple(DeviceEntry(node_id=Identity.generate().node_id, name=n, tags=tags) for n in names)


async def test_a_batch_is_one_transaction_and_one_audit_entry(rig: Rig) -> None:
    lead, chain = rig.org.lead, rig.org.lead_chain
    batch = entries("k-1", "k-2", "k-3")
    done = await rig.request(DeviceAddBatch(devices=batch, skip_existing=False), lead, chain)
    assert done.reply == DeviceBatchAdded(added=3, skipped=())
    [(outcome, _, detail)] = await rig.audit("device-add-batch")
    assert (outcome, detail["added"], detail["tags"]) == ("accepted", 3, ["kiosk"])
    await rig.verify()

    again = (*entries("k-4"), batch[1], *entries("k-5"))  # entry 2 is registered already
    refused = await rig.request(DeviceAddBatch(devices=again, skip_existing=False), lead, chain)
    assert isinstance(refused.reply, ErrorReply)
    assert refused.reply.message.startswith("entry 2: device ")
    names = {d.name for d in await registry.all_devices(rig.service.db)}
    assert names == {"k-1", "k-2", "k-3"}  # neither k-4 nor k-5: all or none
    skipped = await rig.request(DeviceAddBatch(devices=again, skip_existing=True), lead, chain)
    assert skipped.reply == DeviceBatchAdded(added=2, skipped=(batch[1].node_id,))


@pytest.mark.parametrize(
    ("batch", "says"),
    [
        (entries("k-1") + entries("p-1", tags=("prod",)), "entry 2: scope: device"),
        (entries("k-1") + entries("k-1"), "entry 2: its id or name is in the batch twice"),
        (entries("k-1", "Bad Name"), "entry 2: device name"),
        ((), "at least one device"),
    ],
)
async def test_a_bad_entry_refuses_the_batch(
    rig: Rig, batch: tuple[DeviceEntry, ...], says: str
) -> None:
    result = await rig.request(
        DeviceAddBatch(devices=batch, skip_existing=False), rig.org.lead, rig.org.lead_chain
    )
    assert isinstance(result.reply, ErrorReply)
    assert says in result.reply.message
    assert await registry.all_devices(rig.service.db) == []
