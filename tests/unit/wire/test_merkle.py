"""The target tree: every leaf's proof verifies, and nothing else does."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.wire import merkle


def _leaves(n: int) -> tuple[bytes, ...]:
    return merkle.sorted_leaves(hashlib.sha256(str(i).encode()).digest() for i in range(n))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 1000])
def test_every_leaf_proves_its_inclusion(n: int) -> None:
    leaves = _leaves(n)
    root, proofs = merkle.build(leaves)
    assert root == merkle.root_of(leaves)
    for index, (leaf, proof) in enumerate(zip(leaves, proofs, strict=True)):
        assert len(proof) <= max(1, (n - 1).bit_length())
        assert merkle.verify_inclusion(leaf, index, n, proof, root)


def test_a_single_leaf_has_an_empty_proof() -> None:
    root, proofs = merkle.build(_leaves(1))
    assert proofs == [()]
    assert root == merkle.leaf_hash(_leaves(1)[0])


@pytest.mark.parametrize("n", [2, 3, 1000])
def test_a_proof_for_another_leaf_fails(n: int) -> None:
    leaves = _leaves(n)
    root, proofs = merkle.build(leaves)
    outsider = b"\x00" * 32
    assert not merkle.verify_inclusion(outsider, 0, n, proofs[0], root)
    # Another member's proof, presented for this leaf (at either index), fails too.
    assert not merkle.verify_inclusion(leaves[0], 1, n, proofs[1], root)
    assert not merkle.verify_inclusion(leaves[0], 0, n, proofs[1], root)


@pytest.mark.parametrize("n", [2, 3, 1000])
def test_a_truncated_or_padded_proof_fails(n: int) -> None:
    leaves = _leaves(n)
    root, proofs = merkle.build(leaves)
    last = n - 1
    assert not merkle.verify_inclusion(leaves[last], last, n, proofs[last][:-1], root)
    assert not merkle.verify_inclusion(leaves[last], last, n, (*proofs[last], root), root)
    assert not merkle.verify_inclusion(leaves[last], last, n, (), root)


@pytest.mark.parametrize("n", [1, 3, 1000])
def test_a_proof_against_another_root_or_count_fails(n: int) -> None:
    leaves = _leaves(n)
    root, proofs = merkle.build(leaves)
    other, _ = merkle.build(_leaves(n + 1))
    assert not merkle.verify_inclusion(leaves[0], 0, n, proofs[0], other)
    # The count fixes the shape: the last leaf of n is not where the proof says in n + 1.
    last = n - 1
    assert not merkle.verify_inclusion(leaves[last], last, n + 1, proofs[last], root)
    assert not merkle.verify_inclusion(leaves[0], n, n, proofs[0], root)  # index out of range
    assert not merkle.verify_inclusion(leaves[0], -1, n, proofs[0], root)
    assert not merkle.verify_inclusion(leaves[0], 0, n, proofs[0], root[:-1])


def test_a_leaf_hash_cannot_pass_for_a_node() -> None:
    # The two-leaf root is a node over two leaf hashes; as a leaf, those 64 bytes hash to
    # something else, so no one can present an inner node as a device id.
    leaves = _leaves(2)
    root, _ = merkle.build(leaves)
    joined = merkle.leaf_hash(leaves[0]) + merkle.leaf_hash(leaves[1])
    assert merkle.leaf_hash(joined) != root


def test_canonical_order_and_bounds() -> None:
    assert merkle.sorted_leaves([b"b", b"a", b"b"]) == (b"a", b"b")
    with pytest.raises(ValueError, match="at least one"):
        merkle.build(())


@settings(max_examples=300, deadline=timedelta(seconds=2))
@given(
    leaf=st.binary(max_size=40),
    index=st.integers(-2, 70),
    count=st.integers(-2, 70),
    proof=st.lists(st.binary(min_size=30, max_size=33), max_size=24),
    root=st.binary(min_size=31, max_size=33),
)
def test_hostile_proofs_are_refused_never_raise(
    leaf: bytes, index: int, count: int, proof: list[bytes], root: bytes
) -> None:
    # What a rogue coordinator controls in a Deliver: index, hashes (and, through a forged
    # signature it cannot make, root and count). Random ones fail, quietly.
    assert merkle.verify_inclusion(leaf, index, count, proof, root) is False
