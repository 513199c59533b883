"""Node certificates carry exactly the node's key; other keys are refused by name."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from fleet.identity import Identity
from fleet.identity.certs import (
    CertificateKeyError,
    node_id_of_certificate,
    self_signed_certificate,
)


def test_certificate_carries_node_id() -> None:
    ident = Identity.generate()
    cert = self_signed_certificate(ident)
    assert node_id_of_certificate(cert) == ident.node_id
    assert node_id_of_certificate(cert.public_bytes(Encoding.DER)) == ident.node_id


def test_non_ed25519_certificate_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CertificateKeyError, match="not an Ed25519"):
        node_id_of_certificate(cert)


def test_garbage_certificate_refused() -> None:
    with pytest.raises(CertificateKeyError, match="unreadable"):
        node_id_of_certificate(b"\x30\x03garbage")
