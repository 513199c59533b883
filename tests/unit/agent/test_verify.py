"""Announcement verification: each refusal reason, and what passes."""

from __future__ import annotations

import dataclasses
import time

import pytest

from fleet.agent.verify import AnnouncementRefused, verify_announcement
from fleet.identity import Identity, NodeId
from fleet.protocol.messages import Announcement, DeviceList
from fleet.vocabulary import Action
from fleet.wire import SignedEnvelope, Tag, sign_envelope

PATH = "/nix/store/" + "b" * 32 + "-nixos-system-fleet-test-1"
ADMIN = Identity.generate()
DEVICE = Identity.generate().node_id
NOW = 1_700_000_000.0


def announcement(**changes: object) -> Announcement:
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
    return Announcement(**fields)  # type: ignore[arg-type]


def signed(ann: Announcement | None = None, by: Identity = ADMIN) -> SignedEnvelope:
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
