"""Announcement verification: each refusal reason, and what passes."""

from __future__ import annotations

import dataclasses
import time

import pytest

from fleet.agent.verify import AnnouncementRefused, verify_announcement
from fleet.capability import Chain, Permission, Scope, sign_certificate
from fleet.identity import Identity, NodeId
from fleet.protocol.messages import Announcement, AnnouncementV2, DeviceList, TargetProof
from fleet.protocol.targeting import TargetTree, target_tree
from fleet.vocabulary import Action
from fleet.wire import SignedEnvelope, Tag, sign_envelope

PATH = "/nix/store/" + "b" * 32 + "-nixos-system-fleet-test-1"
ADMIN = Identity.generate()
DEVICE = Identity.generate().node_id
NOW = 1_700_000_000.0
DELEGATE = Identity.generate()


def lab_chain() -> Chain:
    """DELEGATE may push to devices tagged `lab`, by ADMIN (a trust root)."""
    cert = sign_certificate(
        ADMIN, DELEGATE.node_id, [Permission.PUSH], Scope.of(tags=["lab"]),
        not_before=NOW - 3600, not_after=NOW + 3600, may_delegate=False,
    )  # fmt: skip
    return Chain(certificates=(cert,))


def announcement(**changes: object) -> AnnouncementV2:
    fields: dict[str, object] = {
        "sequence": 5,
        "devices": (Identity.generate().node_id, DEVICE),
        "targets": ("tag:lab",),
        "store_path": PATH,
        "substituters": ("http://cache.invalid",),
        "action": Action.SWITCH,
        "issued_at": NOW - 10,
        "valid_until": NOW + 3600,
    }
    fields.update(changes)
    return AnnouncementV2(**fields)  # type: ignore[arg-type]


def signed(ann: AnnouncementV2 | None = None, by: Identity = ADMIN) -> SignedEnvelope:
    return sign_envelope(by, Tag.ANNOUNCEMENT, ann or announcement())


def check(
    env: SignedEnvelope,
    floor: int = 4,
    current: SignedEnvelope | None = None,
    admins: tuple[NodeId, ...] = (Identity.generate().node_id, ADMIN.node_id),
) -> object:
    return verify_announcement(
        env, trust_roots=admins, device=DEVICE, floor=floor, current=current, now=NOW
    )


def refused(env: SignedEnvelope, **kw: object) -> AnnouncementRefused:
    with pytest.raises(AnnouncementRefused) as info:
        check(env, **kw)  # type: ignore[arg-type]
    return info.value


def test_valid_announcement_is_accepted() -> None:
    env = signed()
    accepted = verify_announcement(
        env, trust_roots=[ADMIN.node_id], device=DEVICE, floor=4, current=None, now=NOW
    )
    assert accepted.announcement.sequence == 5
    assert not accepted.duplicate
    assert accepted.envelope is env


def test_tampered_signature_refused() -> None:
    env = signed()
    forged = dataclasses.replace(env, payload=signed(announcement(sequence=99)).payload)
    err = refused(forged)
    assert err.code == "bad-signature"
    assert "does not verify" in err.reason


def test_wrong_tag_refused() -> None:
    env = sign_envelope(ADMIN, Tag.ADMIN_REQUEST, announcement())
    assert refused(env).code == "bad-signature"


def test_wrong_message_type_refused() -> None:
    env = sign_envelope(ADMIN, Tag.ANNOUNCEMENT, DeviceList())
    assert refused(env).code == "bad-signature"


def test_signer_not_admin_refused() -> None:
    mallory = Identity.generate()
    err = refused(signed(by=mallory))
    assert err.code == "not-admin"
    assert str(mallory.node_id) in err.reason
    assert err.sequence == 5


def test_other_device_refused() -> None:
    err = refused(signed(announcement(devices=(Identity.generate().node_id,))))
    assert err.code == "not-for-us"


@pytest.mark.parametrize("sequence", [1, 4])
def test_older_or_equal_refused_as_replay(sequence: int) -> None:
    err = refused(signed(announcement(sequence=sequence)), floor=4)
    assert err.code == "replay"
    assert "not newer than 4" in err.reason


def test_same_sequence_different_content_is_a_replay_not_a_duplicate() -> None:
    current = signed(announcement(sequence=4))
    other = signed(announcement(sequence=4, action=Action.BOOT))
    assert refused(other, floor=4, current=current).code == "replay"


def test_exact_redelivery_is_a_duplicate() -> None:
    current = signed(announcement(sequence=4))
    again = SignedEnvelope(
        signer=current.signer,
        tag=current.tag,
        payload=current.payload,
        signature=current.signature,
    )
    accepted = check(again, floor=4, current=current)
    assert accepted.duplicate  # type: ignore[attr-defined]


def test_expired_refused() -> None:
    err = refused(signed(announcement(issued_at=NOW - 100, valid_until=NOW - 1)))
    assert err.code == "expired"
    assert "expired" in err.reason


@pytest.mark.parametrize(
    "path",
    ["/nix/store/short-x", "/tmp/evil", "--option substituters x", PATH + "/bin/sh"],
)
def test_malformed_store_path_refused(path: str) -> None:
    assert refused(signed(announcement(store_path=path))).code == "bad-path"


def test_real_clock_default_usable() -> None:
    env = signed(announcement(issued_at=time.time() - 1, valid_until=time.time() + 60))
    verify_announcement(
        env, trust_roots=[ADMIN.node_id], device=DEVICE, floor=0, current=None, now=time.time()
    )


# ---------------------------------------------------------------- announcement v3: targets


OTHERS = tuple(Identity.generate().node_id for _ in range(6))


def targeted(
    devices: tuple[NodeId, ...] = (), selector: tuple[str, ...] = (), **changes: object
) -> tuple[Announcement, TargetTree]:
    tree = target_tree(devices)
    fields: dict[str, object] = {
        "sequence": 5,
        "selector": selector,
        "devices_root": tree.root,
        "devices_count": tree.count,
        "store_path": PATH,
        "substituters": ("http://cache.invalid",),
        "action": Action.SWITCH,
        "issued_at": NOW - 10,
        "valid_until": NOW + 3600,
    }
    fields.update(changes)
    return Announcement(**fields), tree  # type: ignore[arg-type]


def check_v3(
    ann: Announcement,
    proof: TargetProof | None,
    tags: tuple[str, ...] = (),
    chain: Chain | None = None,
) -> object:
    if chain is not None:
        ann = dataclasses.replace(ann, chain=chain)
    return verify_announcement(
        sign_envelope(ADMIN if chain is None else DELEGATE, Tag.ANNOUNCEMENT, ann),
        trust_roots=[ADMIN.node_id],
        device=DEVICE,
        floor=4,
        current=None,
        now=NOW,
        tags=tags,
        proof=proof,
    )


def refused_v3(ann: Announcement, proof: TargetProof | None, **kw: object) -> str:
    with pytest.raises(AnnouncementRefused) as info:
        check_v3(ann, proof, **kw)  # type: ignore[arg-type]
    return info.value.code


def test_v3_explicit_id_with_its_proof_is_accepted() -> None:
    ann, tree = targeted(devices=(*OTHERS, DEVICE))
    assert check_v3(ann, tree.proofs[DEVICE])


def test_v3_refused_without_a_proof_or_with_another_devices_proof() -> None:
    ann, tree = targeted(devices=(*OTHERS, DEVICE))
    assert refused_v3(ann, None) == "not-for-us"
    for other in OTHERS:  # what a rogue coordinator could forward: a member's real proof
        assert refused_v3(ann, tree.proofs[other]) == "not-for-us"


def test_v3_refused_when_the_proof_is_for_another_root() -> None:
    # A proof that does include this device, but under a root the admin did not sign.
    ann, _ = targeted(devices=OTHERS)
    _, other_tree = targeted(devices=(*OTHERS, DEVICE))
    assert refused_v3(ann, other_tree.proofs[DEVICE]) == "not-for-us"


def test_v3_refused_when_the_proof_is_truncated() -> None:
    ann, tree = targeted(devices=(*OTHERS, DEVICE))
    proof = tree.proofs[DEVICE]
    cut = TargetProof(index=proof.index, hashes=proof.hashes[:-1])
    assert refused_v3(ann, cut) == "not-for-us"


def test_v3_selector_matches_the_agents_own_tags() -> None:
    ann, _ = targeted(selector=("kiosk", "lab"))
    assert check_v3(ann, None, tags=("lab",))
    assert refused_v3(ann, None, tags=("printer",)) == "not-for-us"
    assert refused_v3(ann, None, tags=()) == "not-for-us"


def test_v3_selector_or_explicit_id() -> None:
    ann, tree = targeted(devices=OTHERS, selector=("kiosk",))
    assert check_v3(ann, None, tags=("kiosk",))
    assert refused_v3(ann, tree.proofs[OTHERS[0]], tags=("printer",)) == "not-for-us"


def test_v3_selector_inside_the_signers_scope_only() -> None:
    # The delegate may push to `lab` only: naming `kiosk` in the selector does not widen it.
    ann, _ = targeted(selector=("kiosk",))
    assert refused_v3(ann, None, tags=("kiosk",), chain=lab_chain()) == "scope"
    ann, _ = targeted(selector=("lab",))
    assert check_v3(ann, None, tags=("lab",), chain=lab_chain())


def test_v3_inconsistent_targets_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="at least one"):
        targeted()
    with pytest.raises(ValueError, match="both set"):
        targeted(devices=OTHERS, selector=("lab",), devices_count=0)
    with pytest.raises(ValueError, match="sorted"):
        targeted(selector=("b", "a"))
