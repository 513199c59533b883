"""Bytes a push costs per device, before (an Announcement v2 listing every target, the same
Deliver v1 to each) and after (an Announcement v3 with a Merkle root, each device's Deliver v2
carrying its own proof), for 10, 1,000 and 10,000 explicit targets; plus the time to build
every proof (the coordinator, once per push) and to check one (the agent).

Run: python -m bench.announce_size   (prints a table, then one JSON line; not a timed test)
"""

from __future__ import annotations

import json
import statistics
import time
import timeit

from fleet.agent.verify import verify_announcement
from fleet.identity import Identity, NodeId
from fleet.protocol.messages import (
    Action,
    Announcement,
    AnnouncementV2,
    Deliver,
    DeliverV1,
    PushRequest,
)
from fleet.protocol.targeting import target_tree
from fleet.wire import SignedEnvelope, Tag, encode, sign_envelope

SIZES = (10, 1_000, 10_000)
PATH = "/nix/store/" + "a" * 32 + "-nixos-system-bench"
NOW = 1_800_000_000.0


def _ids(n: int) -> tuple[NodeId, ...]:
    # Node ids are public keys; random 32-byte keys cost the same as real ones on the wire.
    return tuple(Identity.generate().node_id for _ in range(n))


def before(admin: Identity, devices: tuple[NodeId, ...]) -> int:
    """Bytes of the one Deliver v1 every device got (what main sends)."""
    ann = AnnouncementV2(
        sequence=1, devices=devices, targets=("tag:lab",), store_path=PATH,
        substituters=("https://cache.example",), action=Action.SWITCH, issued_at=NOW,
        valid_until=NOW + 3600,
    )  # fmt: skip
    return len(encode(DeliverV1(announcement=sign_envelope(admin, Tag.ANNOUNCEMENT, ann))))


def after(admin: Identity, devices: tuple[NodeId, ...]) -> dict[str, float]:
    started = time.perf_counter()
    tree = target_tree(devices)
    build_s = time.perf_counter() - started
    ann = Announcement(
        sequence=1, selector=(), devices_root=tree.root, devices_count=tree.count,
        store_path=PATH, substituters=("https://cache.example",), action=Action.SWITCH,
        issued_at=NOW, valid_until=NOW + 3600,
    )  # fmt: skip
    envelope = sign_envelope(admin, Tag.ANNOUNCEMENT, ann)
    sizes = [len(encode(Deliver(announcement=envelope, proof=tree.proofs[d]))) for d in devices]
    request = PushRequest(announcement=envelope, devices=devices, targets=("bench",))
    return {
        "max": max(sizes),
        "mean": statistics.fmean(sizes),
        "total": sum(sizes),
        "request": len(encode(request)),
        "build_ms": build_s * 1000,
        "verify_us": _verify_us(admin, envelope, tree.proofs[devices[-1]], devices[-1]),
        "selector": len(encode(Deliver(announcement=_selector(admin), proof=None))),
    }


def _selector(admin: Identity) -> SignedEnvelope:
    ann = Announcement(
        sequence=1, selector=("kiosk",), devices_root=b"", devices_count=0, store_path=PATH,
        substituters=("https://cache.example",), action=Action.SWITCH, issued_at=NOW,
        valid_until=NOW + 3600,
    )  # fmt: skip
    return sign_envelope(admin, Tag.ANNOUNCEMENT, ann)


def _verify_us(admin: Identity, envelope: SignedEnvelope, proof: object, device: NodeId) -> float:
    def check() -> None:
        verify_announcement(
            envelope, trust_roots=[admin.node_id], device=device, floor=0, current=None,
            now=NOW, proof=proof,  # type: ignore[arg-type]
        )  # fmt: skip

    return min(timeit.repeat(check, number=50, repeat=3)) / 50 * 1e6


def main() -> None:
    admin = Identity.generate()
    rows = []
    for n in SIZES:
        devices = _ids(n)
        old = before(admin, devices)
        new = after(admin, devices)
        rows.append({"targets": n, "before_bytes": old, "before_total": old * n, **new})
    print(
        f"{'targets':>8} {'before B/dev':>12} {'after B/dev max':>15} {'mean':>7} "
        f"{'selector':>8} {'before total':>13} {'after total':>12} {'request':>9} "
        f"{'proofs ms':>9} {'verify us':>9}"
    )
    for r in rows:
        print(
            f"{r['targets']:>8,} {r['before_bytes']:>12,} {r['max']:>15,.0f} {r['mean']:>7.0f} "
            f"{r['selector']:>8,.0f} {r['before_total']:>13,} {r['total']:>12,.0f} "
            f"{r['request']:>9,.0f} {r['build_ms']:>9.1f} {r['verify_us']:>9.0f}"
        )
    print(json.dumps({"bench": "announce_size", "rows": rows}))


if __name__ == "__main__":
    main()
