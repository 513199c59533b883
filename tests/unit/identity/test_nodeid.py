"""Node ids: one text form (52 lowercase base32 characters), refused with a reason otherwise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.identity import Identity, InvalidNodeId, NodeId


@given(st.binary(min_size=32, max_size=32))
def test_node_id_text_round_trip(raw: bytes) -> None:
    node_id = NodeId(raw)
    text = str(node_id)
    assert len(text) == 52
    assert text == text.lower()
    assert "=" not in text
    assert NodeId.parse(text) == node_id


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "52 characters"),
        ("a" * 51, "52 characters"),
        ("a" * 53, "52 characters"),
        ("A" * 52, "lowercase"),
        ("1" * 52, "lowercase"),
        ("a" * 51 + "=", "lowercase"),
    ],
)
def test_node_id_parse_rejects_with_reason(text: str, fragment: str) -> None:
    with pytest.raises(InvalidNodeId, match=fragment):
        NodeId.parse(text)


def test_node_id_rejects_second_spelling() -> None:
    text = str(Identity.generate().node_id)
    # The last character carries 4 unused bits; setting them must not give another valid id.
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    idx = alphabet.index(text[-1])
    variant = text[:-1] + alphabet[idx ^ 1]
    with pytest.raises(InvalidNodeId):
        NodeId.parse(variant)
