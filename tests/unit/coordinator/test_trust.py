"""The coordinator checks capability chains: root -> lead -> CI, scopes, revocation, audit."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleet.audit import AuthorityReplay, verify_log
from fleet.capability import (
    EMPTY_CHAIN,
    Chain,
    Permission,
    Scope,
    certificate_id,
    issue,
    revoke,
)
from fleet.coordinator import audit
from fleet.coordinator.database import Database
from fleet.coordinator.service import AdminResult, CoordinatorService
from fleet.identity import Identity, NodeId
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import (
    Action,
    AnnouncementV2,
    AuditPage,
    AuditQuery,
    CertificateChain,
    CertificateLookup,
    DeliverV1,
    DeviceAdd,
    DeviceList,
    DeviceListReply,
    ErrorReply,
    GrantRecord,
    NextSequence,
    NextSequenceReply,
    OkReply,
    PushAccepted,
    PushRequestV1,
    Revocations,
    RevokeRequest,
    StatusRequest,
    StatusSnapshot,
    TargetCheck,
    TargetCheckReply,
    Welcome,
)
from fleet.wire import Message, Tag, encode, sign_envelope
from tests.capability_kit import DAY, NOW, Org, make_org
from tests.unit.coordinator.test_service import Clock, FakeLink, hello

V2 = "/nix/store/" + "b" * 32 + "-nixos-system-v2"


class Rig:
    def __init__(self, db: Database, org: Org) -> None:
        self.org = org
        self.coordinator = Identity.generate()
        self.clock = Clock()
        self.clock.now = NOW
        self.service = CoordinatorService(
            db, self.coordinator.node_id, org.roots, signer=self.coordinator, clock=self.clock
        )

    async def request(self, body: Message, who: Identity, chain: Chain) -> AdminResult:
        env = make_admin_request(
            who, self.coordinator.node_id, body, chain=chain, now=self.clock.now
        )
        return await self.service.handle_admin(encode(env), who.node_id)

    async def as_root(self, body: Message) -> AdminResult:
        return await self.request(body, self.org.root, EMPTY_CHAIN)

    async def as_lead(self, body: Message) -> AdminResult:
        return await self.request(body, self.org.lead, self.org.lead_chain)

    async def as_ci(self, body: Message) -> AdminResult:
        return await self.request(body, self.org.ci, self.org.ci_chain)

    async def add(self, name: str, tags: tuple[str, ...]) -> NodeId:
        node = Identity.generate().node_id
        result = await self.as_root(DeviceAdd(node_id=node, name=name, tags=tags))
        assert isinstance(result.reply, OkReply), result.reply
        return node

    async def push(self, who: Identity, chain: Chain, devices: list[NodeId]) -> AdminResult:
        seq = await self.request(NextSequence(), who, chain)
        number = seq.reply.sequence if isinstance(seq.reply, NextSequenceReply) else 1
        ann = AnnouncementV2(
            sequence=number,
            devices=tuple(devices),
            targets=("tag:x",),
            store_path=V2,
            substituters=(),
            action=Action.SWITCH,
            issued_at=self.clock.now,
            valid_until=self.clock.now + 3600,
            chain=chain,
        )
        body = PushRequestV1(announcement=sign_envelope(who, Tag.ANNOUNCEMENT, ann))
        return await self.request(body, who, chain)

    async def rows(self) -> list[audit.AuditEntry]:
        rows = await self.service.db.fetchall("SELECT * FROM audit ORDER BY id")
        return [audit.entry_of_row(r) for r in rows]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = await Database.open(tmp_path / "state.db")
    yield Rig(db, make_org())
    await db.close()


def refusal(result: AdminResult) -> ErrorReply:
    assert isinstance(result.reply, ErrorReply), result.reply
    return result.reply


async def test_ci_pushes_inside_its_scope_only(rig: Rig) -> None:
    prod = await rig.add("prod-1", ("prod",))
    lab = await rig.add("lab-1", ("lab",))
    accepted = await rig.push(rig.org.ci, rig.org.ci_chain, [prod])
    assert isinstance(accepted.reply, PushAccepted)

    refused = refusal(await rig.push(rig.org.ci, rig.org.ci_chain, [prod, lab]))
    assert refused.code == "unauthorized"
    assert f"device {lab} (tags lab) is outside the scope tag:prod" in refused.message
    last = (await rig.rows())[-1]
    assert last.outcome == "refused"
    assert last.details()["capability"] == "scope"


async def test_each_request_needs_its_action(rig: Rig) -> None:
    node = Identity.generate().node_id
    refused = refusal(await rig.as_ci(DeviceAdd(node_id=node, name="x", tags=("prod",))))
    assert "action" in refused.message
    assert "may not devices" in refused.message
    status = refusal(await rig.as_ci(StatusRequest(watch=False)))
    assert "may not read" in status.message
    assert isinstance((await rig.as_lead(StatusRequest(watch=False))).reply, StatusSnapshot)


async def test_device_changes_stay_inside_the_scope(rig: Rig) -> None:
    node = Identity.generate().node_id
    ok = await rig.as_lead(DeviceAdd(node_id=node, name="p", tags=("prod",)))
    assert isinstance(ok.reply, OkReply)
    office = refusal(await rig.as_lead(DeviceAdd(node_id=node, name="p", tags=("prod", "x"))))
    assert "tag x is outside the scope" in office.message
    other = await rig.add("office-1", ("office",))
    moved = refusal(await rig.as_lead(DeviceAdd(node_id=other, name="o", tags=("prod",))))
    assert "(tags office) is outside the scope" in moved.message


async def test_unknown_key_expired_chain_and_non_subject_are_refused(rig: Rig) -> None:
    stranger = Identity.generate()
    unknown = refusal(await rig.request(NextSequence(), stranger, EMPTY_CHAIN))
    assert "unknown-root" in unknown.message
    assert "not a trust root" in unknown.message
    stolen = refusal(await rig.request(NextSequence(), stranger, rig.org.ci_chain))
    assert "not-subject" in stolen.message
    rig.clock.now = NOW + 8 * DAY
    expired = refusal(await rig.as_ci(NextSequence()))
    assert "expired" in expired.message


async def test_a_forged_chain_is_refused_and_audited(rig: Rig) -> None:
    first, second = rig.org.ci_chain.certificates
    forged = Chain(certificates=(first, dataclasses.replace(second, signature=bytes(64))))
    refused = refusal(await rig.request(NextSequence(), rig.org.ci, forged))
    assert "broken-link" in refused.message
    last = (await rig.rows())[-1]
    assert last.outcome == "refused"
    assert last.details()["capability"] == "broken-link"


async def test_announcement_signed_by_another_key_needs_its_own_authority(rig: Rig) -> None:
    """The lead sends a push whose announcement a key without authority signed."""
    prod = await rig.add("prod-1", ("prod",))
    rogue = Identity.generate()
    ann = AnnouncementV2(
        sequence=1,
        devices=(prod,),
        targets=("prod-1",),
        store_path=V2,
        substituters=(),
        action=Action.SWITCH,
        issued_at=NOW,
        valid_until=NOW + 60,
    )
    body = PushRequestV1(announcement=sign_envelope(rogue, Tag.ANNOUNCEMENT, ann))
    refused = refusal(await rig.as_lead(body))
    assert "unknown-root" in refused.message


async def test_revocation_stops_the_key_and_reaches_agents(rig: Rig) -> None:
    prod = await rig.add("prod-1", ("prod",))
    link = FakeLink(prod)
    assert await rig.service.agent_hello(link, hello()) is not None
    ci_cert = certificate_id(rig.org.ci_chain.certificates[-1])

    lookup = await rig.as_lead(CertificateLookup(certificate=ci_cert))
    assert isinstance(lookup.reply, ErrorReply)  # never seen yet
    assert isinstance((await rig.as_ci(NextSequence())).reply, NextSequenceReply)
    lookup = await rig.as_lead(CertificateLookup(certificate=ci_cert))
    assert lookup.reply == CertificateChain(chain=rig.org.ci_chain)

    signed = revoke(
        rig.org.lead,
        rig.org.lead_chain,
        ci_cert,
        revoked_chain=rig.org.ci_chain,
        reason="leaked",
        now=NOW,
    )
    assert isinstance((await rig.as_lead(RevokeRequest(revocation=signed))).reply, OkReply)
    assert link.sent[-1] == Revocations(revocations=(signed,))

    refused = refusal(await rig.push(rig.org.ci, rig.org.ci_chain, [prod]))
    assert "revoked" in refused.message

    # After a restart the coordinator still knows, and tells a reconnecting agent first.
    fresh = CoordinatorService(
        rig.service.db, rig.coordinator.node_id, rig.org.roots, clock=rig.clock
    )
    rig.service = fresh
    assert "revoked" in refusal(await rig.as_ci(NextSequence())).message
    accepted = await rig.push(rig.org.lead, rig.org.lead_chain, [prod])
    assert isinstance(accepted.reply, PushAccepted)
    again = FakeLink(prod)
    assert await fresh.agent_hello(again, hello()) is not None
    kinds = [type(m) for m in again.sent]
    assert kinds == [Welcome, Revocations, DeliverV1]


async def test_a_ci_key_cannot_revoke(rig: Rig) -> None:
    lead_cert = certificate_id(rig.org.lead_chain.certificates[-1])
    signed = revoke(
        rig.org.ci,
        rig.org.ci_chain,
        lead_cert,
        revoked_chain=rig.org.lead_chain,
        reason="coup",
        now=NOW,
    )
    refused = refusal(await rig.as_ci(RevokeRequest(revocation=signed)))
    assert "bad-revocation" in refused.message
    assert isinstance((await rig.as_lead(NextSequence())).reply, NextSequenceReply)


async def test_grants_are_recorded_and_the_log_verifies_with_the_root_alone(rig: Rig) -> None:
    new_key = Identity.generate()
    chain = issue(
        rig.org.lead,
        rig.org.lead_chain,
        rig.org.roots,
        new_key.node_id,
        [Permission.READ],
        Scope.of(tags=["lab"]),
        not_before=NOW,
        not_after=NOW + DAY,
        may_delegate=False,
        now=NOW,
    )
    assert isinstance((await rig.as_lead(GrantRecord(chain=chain))).reply, OkReply)
    not_mine = refusal(await rig.as_root(GrantRecord(chain=chain)))
    assert "not by the requester" in not_mine.message
    prod = await rig.add("prod-1", ("prod",))
    await rig.push(rig.org.ci, rig.org.ci_chain, [prod])
    await rig.as_ci(StatusRequest(watch=False))  # refused: CI may not read

    page = (await rig.as_root(AuditQuery(after=0, limit=100))).reply
    assert isinstance(page, AuditPage)
    assert not page.more
    actions = [(e.action, e.outcome) for e in page.entries]
    assert ("grant", "accepted") in actions
    assert ("push", "accepted") in actions
    assert ("status", "refused") in actions
    assert len(page.checkpoints) == 1
    entries = await rig.rows()
    report = verify_log(
        entries,
        page.checkpoints,
        rig.coordinator.node_id,
        authorize=AuthorityReplay(rig.org.roots),
    )
    assert report.sealed == len(entries)


async def test_a_push_only_key_lists_just_the_devices_in_its_scope(rig: Rig) -> None:
    prod = await rig.add("prod-1", ("prod",))
    await rig.add("lab-1", ("lab",))
    listed = (await rig.as_ci(DeviceList())).reply
    assert isinstance(listed, DeviceListReply)
    assert [d.node_id for d in listed.devices] == [prod]
    everything = (await rig.as_lead(DeviceList())).reply
    assert isinstance(everything, DeviceListReply)
    assert len(everything.devices) == 2


async def test_audit_needs_the_audit_action(rig: Rig) -> None:
    refused = refusal(await rig.as_lead(AuditQuery(after=0, limit=10)))
    assert "may not audit" in refused.message


async def test_target_check_names_what_lies_outside_a_push_only_scope(rig: Rig) -> None:
    await rig.add("prod-1", ("prod",))
    lab = await rig.add("lab-1", ("lab",))
    await rig.add("mixed", ("prod", "lab"))
    reply = (
        await rig.as_ci(
            TargetCheck(targets=("lab-1", str(lab), "tag:lab", "prod-1", "nothing", str(lab)[:8]))
        )
    ).reply
    assert isinstance(reply, TargetCheckReply), reply
    # tag:lab also names `mixed`, which is in scope; a short id is never answered.
    assert reply.outside == ("lab-1", str(lab))
    assert reply.scope == "tag:prod"
    assert (await rig.rows())[-1].action != "target-check"  # a read: not audited
    too_many = refusal(await rig.as_ci(TargetCheck(targets=tuple(f"d{i}" for i in range(65)))))
    assert too_many.code == "invalid"
    no_push = refusal(await rig.request(TargetCheck(targets=("lab-1",)), *rig_reader(rig)))
    assert "may not push" in no_push.message


def rig_reader(rig: Rig) -> tuple[Identity, Chain]:
    """A key the lead certifies for `read` only."""
    reader = Identity.generate()
    chain = issue(
        rig.org.lead,
        rig.org.lead_chain,
        rig.org.roots,
        reader.node_id,
        [Permission.READ],
        Scope.of(tags=["prod"]),
        not_before=NOW - DAY,
        not_after=NOW + DAY,
        may_delegate=False,
        now=NOW,
    )
    return reader, chain
