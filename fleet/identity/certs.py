"""Self-signed X.509 certificates carrying a node's Ed25519 key, for TLS (QUIC and relay).

TLS needs a certificate; we do not need a CA. Each node presents a self-signed certificate
whose public key *is* its node id, and the peer pins that key to the node id it expected.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from fleet.identity.keys import Identity
from fleet.identity.nodeid import NodeId

_VALIDITY = datetime.timedelta(days=3650)


class CertificateKeyError(Exception):
    """A peer certificate whose key is not an Ed25519 node id."""


def private_key(identity: Identity) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(identity.seed)


def self_signed_certificate(identity: Identity) -> x509.Certificate:
    """A certificate for `identity`'s key, valid from one day ago for ten years.

    Validity dates are not checked by peers (the key is pinned instead); they are set wide so
    that devices with a wrong clock still complete handshakes.
    """
    key = private_key(identity)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(identity.node_id))])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALIDITY)
        .sign(key, None)
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(identity: Identity) -> bytes:
    """PEM of the secret key, for TLS libraries that load keys from files. Never log it."""
    return private_key(identity).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def node_id_of_certificate(cert: x509.Certificate | bytes) -> NodeId:
    """The node id whose key a certificate (object or DER) carries; anything else is an error."""
    try:
        if isinstance(cert, bytes):
            cert = x509.load_der_x509_certificate(cert)
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateKeyError(f"unreadable peer certificate: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise CertificateKeyError(
            f"peer certificate key is {type(key).__name__}, not an Ed25519 node key"
        )
    return NodeId(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
