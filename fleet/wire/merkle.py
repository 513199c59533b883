"""A Merkle tree over a sorted set of byte strings, and inclusion proofs of O(log N) hashes.

Why: an admin signs one root over the devices a push names, and each device receives only
the few hashes that connect its own id to that root, so what a device is sent does not grow
with the fleet (docs/protocol.md, "Targets").

The shape is RFC 9162's (Certificate Transparency v2): a tree of n leaves splits at the
largest power of two below n, and a proof lists the siblings from the leaf up. The hashes
are fleet's tagged SHA-256 (HashTag.TARGET_LEAF for leaves, TARGET_NODE for inner nodes), so
no leaf can pass for a node and no other hash in fleet can pass for either. The leaf count
is signed next to the root: with the index it fixes the tree's shape, so a proof for a
smaller or larger tree, a truncated proof or a padded one does not verify.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from fleet.wire.tags import HashTag, tagged_hash

DIGEST_LEN = 32
MAX_LEAVES = 1 << 20  # far above any fleet; bounds a proof to MAX_DEPTH hashes
MAX_DEPTH = 20


def leaf_hash(leaf: bytes) -> bytes:
    return tagged_hash(HashTag.TARGET_LEAF, leaf)


def _node_hash(left: bytes, right: bytes) -> bytes:
    return tagged_hash(HashTag.TARGET_NODE, left, right)


def _split(n: int) -> int:
    """The largest power of two strictly below n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def sorted_leaves(leaves: Iterable[bytes]) -> tuple[bytes, ...]:
    """The canonical leaf order: sorted bytes, duplicates removed."""
    return tuple(sorted(set(leaves)))


def build(leaves: Sequence[bytes]) -> tuple[bytes, list[tuple[bytes, ...]]]:
    """(root, proof of every leaf in order) for leaves already in canonical order.

    O(N log N) in time, one pass: each subtree's hash is appended to the proofs of the
    leaves of its sibling. Raises ValueError for no leaves or more than MAX_LEAVES.
    """
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    if len(leaves) > MAX_LEAVES:
        raise ValueError(f"at most {MAX_LEAVES} leaves")
    proofs: list[list[bytes]] = [[] for _ in leaves]

    def subtree(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaf_hash(leaves[lo])
        mid = lo + _split(hi - lo)
        left, right = subtree(lo, mid), subtree(mid, hi)
        for i in range(lo, mid):
            proofs[i].append(right)
        for i in range(mid, hi):
            proofs[i].append(left)
        return _node_hash(left, right)

    root = subtree(0, len(leaves))
    return root, [tuple(p) for p in proofs]


def root_of(leaves: Sequence[bytes]) -> bytes:
    return build(leaves)[0]


def verify_inclusion(
    leaf: bytes, index: int, count: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether `proof` shows `leaf` at `index` in the tree of `count` leaves with `root`.

    RFC 9162 section 2.1.3.2; constant-time comparison of the recomputed root.
    """
    if not 0 <= index < count <= MAX_LEAVES or len(proof) > MAX_DEPTH:
        return False
    if any(len(p) != DIGEST_LEN for p in proof) or len(root) != DIGEST_LEN:
        return False
    fn, sn = index, count - 1
    r = leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            return False  # a longer proof than this tree has levels
        if fn & 1 or fn == sn:
            r = _node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(r, root)
