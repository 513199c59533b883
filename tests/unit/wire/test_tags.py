"""Signatures are bound to their purpose: one made for one tag never verifies under another."""

from __future__ import annotations

import pytest

from fleet.identity import BadSignature, Identity
from fleet.wire.tags import Tag, sign, verify


def test_signature_bound_to_tag() -> None:
    ident = Identity.generate()
    sig = sign(ident, Tag.RELAY_AUTH, b"payload")
    verify(ident.node_id, Tag.RELAY_AUTH, b"payload", sig)
    for other in Tag:
        if other is not Tag.RELAY_AUTH:
            with pytest.raises(BadSignature):
                verify(ident.node_id, other, b"payload", sig)
    with pytest.raises(BadSignature):
        ident.node_id.verify(b"payload", sig)


def test_tags_are_distinct_and_short() -> None:
    values = [t.value for t in Tag]
    assert len(set(values)) == len(values)
    assert all(0 < len(v) < 256 for v in values)
