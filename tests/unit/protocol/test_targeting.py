"""Which devices an announcement targets: the tree fleetctl signs and the check agents make."""

from __future__ import annotations

import pytest

from fleet.identity import Identity
from fleet.protocol.messages import Action, Announcement, AnnouncementV2, Welcome
from fleet.protocol.targeting import read_announcement, selects, target_tree, targets_device
from fleet.wire import WireError, encode

PATH = "/nix/store/" + "c" * 32 + "-nixos-system"
IDS = tuple(Identity.generate().node_id for _ in range(5))


def test_the_tree_does_not_depend_on_order_or_duplicates() -> None:
    tree = target_tree(IDS)
    again = target_tree((*reversed(IDS), IDS[0]))
    assert (again.root, again.count) == (tree.root, tree.count) == (tree.root, 5)
    assert again.proofs == tree.proofs
    assert set(tree.devices) == set(IDS)


def test_no_ids_is_an_empty_tree() -> None:
    tree = target_tree(())
    assert (tree.root, tree.count, dict(tree.proofs)) == (b"", 0, {})


def test_selectors_match_any_of_their_tags() -> None:
    assert selects(("kiosk", "lab"), ("lab", "x"))
    assert not selects(("kiosk",), ("lab",))
    assert not selects((), ("lab",))


def test_targets_device_by_proof_by_selector_or_by_v2_list() -> None:
    tree = target_tree(IDS[:3])
    ann = Announcement(
        sequence=1, selector=("lab",), devices_root=tree.root, devices_count=tree.count,
        store_path=PATH, substituters=(), action=Action.SWITCH, issued_at=1.0, valid_until=2.0,
    )  # fmt: skip
    assert targets_device(ann, IDS[0], (), tree.proofs[IDS[0]])
    assert not targets_device(ann, IDS[3], (), tree.proofs[IDS[0]])
    assert targets_device(ann, IDS[3], ("lab",), None)
    old = AnnouncementV2(
        sequence=1, devices=IDS[:2], targets=(), store_path=PATH, substituters=(),
        action=Action.SWITCH, issued_at=1.0, valid_until=2.0,
    )  # fmt: skip
    assert targets_device(old, IDS[1], (), None)
    assert not targets_device(old, IDS[2], ("lab",), None)  # v2 lists ids; tags do not count
    assert read_announcement(encode(ann)) == ann
    assert read_announcement(encode(old)) == old


def test_read_announcement_refuses_other_messages() -> None:
    with pytest.raises(WireError, match="expected an announcement"):
        read_announcement(encode(Welcome(approved=True, name=None)))
