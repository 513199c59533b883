"""TLS for relay connections, driven sans-IO over memory BIOs, and the relay's key pinning.

Doing TLS ourselves (instead of asyncio's ssl= transports) lets one deadline cover TCP accept,
the TLS handshake and the relay login, and lets the relay count and log every connection
that never finishes its handshake.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from fleet.identity import Identity, NodeId
from fleet.identity.certs import (
    CertificateKeyError,
    certificate_pem,
    node_id_of_certificate,
    private_key_pem,
    self_signed_certificate,
)

_READ_SIZE = 256 * 1024


class TlsError(Exception):
    """The TLS layer failed (handshake refused, corrupt record)."""

    reason = "tls_error"


class RelayPinningError(Exception):
    """The relay's certificate does not carry the key its URL names."""

    reason = "relay_id_mismatch"


def server_context(identity: Identity) -> ssl.SSLContext:
    """TLS 1.3 server context presenting a self-signed certificate for `identity`'s key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # load_cert_chain only reads files: write them into a private directory, then delete.
    with tempfile.TemporaryDirectory(prefix="fleet-relay-tls-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        cert_path.write_bytes(certificate_pem(self_signed_certificate(identity)))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, private_key_pem(identity))
        finally:
            os.close(fd)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def client_context() -> ssl.SSLContext:
    """TLS 1.3 client context without CA checks: the relay's key is pinned instead."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_relay_certificate(der: bytes | None, expected: NodeId) -> None:
    """Raise RelayPinningError unless the certificate carries `expected`'s key.

    TLS 1.3 CertificateVerify has already proven the peer holds that certificate's key, so
    matching the key to the URL's node id authenticates the relay.
    """
    if der is None:
        raise RelayPinningError("relay presented no certificate")
    try:
        actual = node_id_of_certificate(der)
    except CertificateKeyError as exc:
        raise RelayPinningError(f"relay certificate unusable: {exc}") from exc
    if actual != expected:
        raise RelayPinningError(
            f"relay certificate key {actual} does not match expected relay id {expected}"
        )


class TlsChannel:
    """One TLS session as a machine: ciphertext in and out, plaintext in and out."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=None
        )
        self.handshake_complete = False
        self.eof = False
        if not server_side:
            self._handshake()  # produces the ClientHello

    def _handshake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake failed: {exc.reason or exc}") from exc
        self.handshake_complete = True

    def receive(self, data: bytes) -> bytes:
        """Feed ciphertext; return whatever plaintext it completes (often b"")."""
        self._incoming.write(data)
        if not self.handshake_complete:
            self._handshake()
            if not self.handshake_complete:
                return b""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._ssl.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof = True
                break
            except ssl.SSLError as exc:
                raise TlsError(f"TLS error: {exc.reason or exc}") from exc
            if not chunk:
                self.eof = True
                break
            chunks.append(chunk)
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        """Encrypt application data (only after the handshake)."""
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise TlsError(f"TLS error: {exc.reason or exc}") from exc

    def data_to_send(self) -> bytes:
        return self._outgoing.read()

    def peer_certificate(self) -> bytes | None:
        return self._ssl.getpeercert(binary_form=True)
