"""Identity: signatures that verify only for their key and message; no secret in its repr."""

from __future__ import annotations

import pytest

from fleet.identity import BadSignature, Identity


def test_sign_and_verify() -> None:
    ident = Identity.generate()
    sig = ident.sign(b"message")
    ident.node_id.verify(b"message", sig)
    with pytest.raises(BadSignature):
        ident.node_id.verify(b"messagE", sig)
    with pytest.raises(BadSignature):
        Identity.generate().node_id.verify(b"message", sig)
    with pytest.raises(BadSignature):
        ident.node_id.verify(b"message", sig[:10])


def test_identity_repr_hides_secret() -> None:
    ident = Identity.generate()
    assert ident.seed.hex() not in repr(ident)
    assert ident.node_id.short() in repr(ident)
