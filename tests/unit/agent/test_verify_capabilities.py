"""The agent checks the signer's chain itself: roots, scope by its own tags, revocations."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.agent.agent import Agent
from fleet.agent.state import StateFile
from fleet.agent.updater import ApplyConfig
from fleet.agent.verify import AnnouncementRefused, verify_announcement
from fleet.capability import (
    EMPTY_CHAIN,
    Chain,
    Permission,
    Scope,
    certificate_id,
    revoke,
    sign_certificate,
)
from fleet.identity import Identity
from fleet.nix import NixStore
from fleet.protocol.messages import AnnouncementV2
from fleet.vocabulary import Action
from fleet.wire import SignedEnvelope, Tag, sign_envelope
from tests.capability_kit import DAY, NOW, Org, make_org

PATH = "/nix/store/" + "c" * 32 + "-nixos-system-v3"
DEVICE = Identity.generate()


def announce(who: Identity, chain: Chain, sequence: int = 5) -> SignedEnvelope:
    ann = AnnouncementV2(
        sequence=sequence,
        devices=(DEVICE.node_id,),
        targets=("tag:prod",),
        store_path=PATH,
        substituters=(),
        action=Action.SWITCH,
        issued_at=NOW - 10,
        valid_until=NOW + 3600,
        chain=chain,
    )
    return sign_envelope(who, Tag.ANNOUNCEMENT, ann)


def check(
    env: SignedEnvelope,
    org: Org,
    tags: tuple[str, ...] = ("prod",),
    revoked: frozenset[bytes] = frozenset(),
    now: float = NOW,
) -> None:
    verify_announcement(
        env,
        trust_roots=org.roots,
        device=DEVICE.node_id,
        tags=tags,
        revoked=revoked,
        floor=0,
        current=None,
        now=now,
    )


def refused(env: SignedEnvelope, org: Org, **kw: object) -> AnnouncementRefused:
    with pytest.raises(AnnouncementRefused) as info:
        check(env, org, **kw)  # type: ignore[arg-type]
    return info.value


def test_ci_key_with_a_chain_to_our_root_is_accepted() -> None:
    org = make_org()
    check(announce(org.ci, org.ci_chain), org)
    check(announce(org.root, EMPTY_CHAIN), org, tags=())


def test_device_outside_the_scope_by_its_own_tags() -> None:
    org = make_org()
    err = refused(announce(org.ci, org.ci_chain), org, tags=("lab",))
    assert err.code == "scope"
    assert "outside the scope tag:prod" in err.reason
    assert refused(announce(org.ci, org.ci_chain), org, tags=()).code == "scope"


def test_chain_from_another_organization() -> None:
    org, other = make_org(), make_org()
    err = refused(announce(other.ci, other.ci_chain), org)
    assert err.code == "not-admin"
    assert "not a configured trust root" in err.reason


def test_key_without_push() -> None:
    org = make_org()
    reader = Identity.generate()
    chain = Chain(
        certificates=(
            *org.lead_chain.certificates,
            sign_certificate(
                org.lead,
                reader.node_id,
                [Permission.READ],
                Scope.of(tags=["prod"]),
                not_before=NOW - DAY,
                not_after=NOW + DAY,
                may_delegate=False,
            ),
        )
    )
    err = refused(announce(reader, chain), org)
    assert err.code == "action"
    assert "may not push" in err.reason


def test_widened_chain_is_refused() -> None:
    org = make_org()
    wide = Chain(
        certificates=(
            *org.lead_chain.certificates,
            sign_certificate(
                org.lead,
                org.ci.node_id,
                [Permission.PUSH],
                Scope.everything(),
                not_before=NOW - DAY,
                not_after=NOW + DAY,
                may_delegate=False,
            ),
        )
    )
    assert refused(announce(org.ci, wide), org).code == "widened"


def test_expired_and_revoked_certificates() -> None:
    org = make_org()
    env = announce(org.ci, org.ci_chain)
    assert refused(env, org, now=NOW + 8 * DAY).code == "expired-certificate"
    ci_cert = certificate_id(org.ci_chain.certificates[-1])
    err = refused(env, org, revoked=frozenset({ci_cert}))
    assert err.code == "revoked"
    assert "has been revoked" in err.reason


def make_agent(tmp_path: Path, org: Org) -> Agent:
    config = ApplyConfig(
        store=NixStore.chroot(tmp_path / "store"),
        profile=tmp_path / "profile",
        substituters=("http://127.0.0.1:9",),
        trusted_public_keys=("k-1:" + "A" * 43 + "=",),
    )
    return Agent(
        DEVICE.node_id,
        org.roots,
        config,
        StateFile(tmp_path / "state"),
        tags=("prod",),
        clock=lambda: NOW,
    )


async def test_agent_believes_only_verified_revocations_and_remembers_them(
    tmp_path: Path,
) -> None:
    org = make_org()
    agent = make_agent(tmp_path, org)
    ci_cert = certificate_id(org.ci_chain.certificates[-1])
    forged = revoke(Identity.generate(), EMPTY_CHAIN, ci_cert, reason="x", now=NOW)
    agent.on_revocations([forged])
    assert agent.on_deliver(announce(org.ci, org.ci_chain, 1)) is None  # still accepted

    real = revoke(org.root, EMPTY_CHAIN, ci_cert, reason="laptop lost", now=NOW)
    agent.on_revocations([real])
    rejected = agent.on_deliver(announce(org.ci, org.ci_chain, 2))
    assert rejected is not None
    assert "revoked" in rejected.reason

    restarted = make_agent(tmp_path, org)
    again = restarted.on_deliver(announce(org.ci, org.ci_chain, 3))
    assert again is not None
    assert "revoked" in again.reason
    assert restarted.on_deliver(announce(org.lead, org.lead_chain, 3)) is None
