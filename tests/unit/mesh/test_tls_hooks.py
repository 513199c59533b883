"""TLS pinning on aioquic internals, driven in memory (no sockets)."""

from __future__ import annotations

import datetime
import itertools
import re
from typing import Any

import aioquic
import pytest
from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted
from aioquic.quic.packet import pull_quic_header
from aioquic.quic.recovery import QuicPacketPacer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from fleet.identity import Identity, NodeId
from fleet.identity.certs import private_key
from fleet.mesh.tls_hooks import (
    PACING_BURST,
    AioquicInternalsChanged,
    PinnedQuicConnection,
    TimerAwarePacer,
    check_internals,
    pending_close,
    quic_configuration,
)


def _config(identity: Identity, *, is_client: bool) -> QuicConfiguration:
    return quic_configuration(
        identity,
        is_client=is_client,
        alpns=["test"],
        idle_timeout=30,
        max_datagram_size=1200,
        max_data=1 << 20,
        max_stream_data=1 << 20,
    )


class Handshake:
    """A client and a server connection pumped against each other in memory."""

    def __init__(
        self,
        client_cfg: QuicConfiguration,
        client_expects: NodeId,
        server_cfg: QuicConfiguration,
        server_expects: NodeId,
    ) -> None:
        self.client = PinnedQuicConnection(configuration=client_cfg, expected_peer=client_expects)
        self.server: PinnedQuicConnection | None = None
        self.server_cfg, self.server_expects = server_cfg, server_expects
        self.events: dict[str, list[Any]] = {"client": [], "server": []}

    def run(self) -> None:
        now = 0.0
        self.client.connect(("server", 0), now)
        for _ in range(20):
            for data, _ in self.client.datagrams_to_send(now):
                if self.server is None:
                    header = pull_quic_header(Buffer(data=data), 8)
                    self.server = PinnedQuicConnection(
                        configuration=self.server_cfg,
                        expected_peer=self.server_expects,
                        original_destination_connection_id=header.destination_cid,
                    )
                self.server.receive_datagram(data, ("client", 0), now)
            if self.server is not None:
                for data, _ in self.server.datagrams_to_send(now):
                    self.client.receive_datagram(data, ("server", 0), now)
            now += 0.01
        for name, conn in (("client", self.client), ("server", self.server)):
            while conn is not None and (event := conn.next_event()) is not None:
                self.events[name].append(event)

    def completed(self, side: str) -> bool:
        return any(isinstance(e, HandshakeCompleted) for e in self.events[side])

    def close_reason(self, side: str) -> str:
        conn = self.client if side == "client" else self.server
        assert conn is not None
        closing = pending_close(conn)
        assert closing is not None, f"{side} did not close"
        return closing.reason_phrase


@pytest.fixture
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture
def bob() -> Identity:
    return Identity.generate()


def test_both_sides_learn_the_pinned_peer(alice: Identity, bob: Identity) -> None:
    hs = Handshake(
        _config(alice, is_client=True), bob.node_id, _config(bob, is_client=False), alice.node_id
    )
    hs.run()
    assert hs.completed("client")
    assert hs.completed("server")
    assert hs.client.verified_peer == bob.node_id
    assert hs.server is not None
    assert hs.server.verified_peer == alice.node_id


def test_peer_id_is_not_trusted_before_the_handshake_completes(alice: Identity) -> None:
    conn = PinnedQuicConnection(
        configuration=_config(alice, is_client=True), expected_peer=Identity.generate().node_id
    )
    assert conn.verified_peer is None
    conn.connect(("server", 0), 0.0)
    assert conn.verified_peer is None


def test_client_rejects_a_server_with_another_id(alice: Identity, bob: Identity) -> None:
    expected = Identity.generate().node_id
    hs = Handshake(
        _config(alice, is_client=True), expected, _config(bob, is_client=False), alice.node_id
    )
    hs.run()
    assert not hs.completed("client")
    reason = hs.close_reason("client")
    assert f"peer is node {bob.node_id}, expected {expected}" in reason


def test_server_rejects_a_client_that_is_not_the_sending_node(
    alice: Identity, bob: Identity
) -> None:
    hs = Handshake(
        _config(alice, is_client=True),
        bob.node_id,
        _config(bob, is_client=False),
        Identity.generate().node_id,  # packets came from another node
    )
    hs.run()
    assert not hs.completed("server")
    assert hs.server is not None
    assert hs.server.verified_peer is None
    assert "expected" in hs.close_reason("server")


def test_server_rejects_a_client_without_certificate(alice: Identity, bob: Identity) -> None:
    client_cfg = _config(alice, is_client=True)
    client_cfg.certificate = None
    client_cfg.private_key = None
    hs = Handshake(client_cfg, bob.node_id, _config(bob, is_client=False), alice.node_id)
    hs.run()
    assert not hs.completed("server")
    assert "no certificate" in hs.close_reason("server")
    assert hs.server is not None
    assert hs.server.verified_peer is None


def _forged_cert(subject_key: Any, signer: Any, name: str = "forged") -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    x_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(x_name)
        .issuer_name(x_name)
        .public_key(subject_key)
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(signer, algorithm)
    )


def test_impersonation_with_victims_key_signed_by_another_key_fails(
    alice: Identity, bob: Identity
) -> None:
    """Mallory presents a certificate carrying Bob's public key, signed with her own key."""
    mallory = Identity.generate()
    server_cfg = _config(mallory, is_client=False)
    server_cfg.certificate = _forged_cert(private_key(bob).public_key(), private_key(mallory))
    hs = Handshake(_config(alice, is_client=True), bob.node_id, server_cfg, alice.node_id)
    hs.run()
    assert not hs.completed("client")
    assert "not self-signed" in hs.close_reason("client")


def test_impersonation_with_victims_real_certificate_fails(alice: Identity, bob: Identity) -> None:
    """Mallory replays Bob's genuine certificate but cannot sign CertificateVerify as Bob."""
    mallory = Identity.generate()
    server_cfg = _config(mallory, is_client=False)
    server_cfg.certificate = _config(bob, is_client=False).certificate
    hs = Handshake(_config(alice, is_client=True), bob.node_id, server_cfg, alice.node_id)
    hs.run()
    assert not hs.completed("client")
    assert hs.client.verified_peer is None
    closing = pending_close(hs.client)
    assert closing is not None
    assert closing.error_code == 0x100 + tls.AlertDescription.decrypt_error


def test_non_ed25519_certificate_is_rejected(alice: Identity) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["test"])
    server_cfg.certificate = _forged_cert(key.public_key(), key)
    server_cfg.private_key = key
    hs = Handshake(
        _config(alice, is_client=True), Identity.generate().node_id, server_cfg, alice.node_id
    )
    hs.run()
    assert not hs.completed("client")
    assert hs.client.verified_peer is None
    # We offer only Ed25519 signatures, so an ECDSA server cannot even sign; were it to get
    # that far, the pin would refuse a non-Ed25519 certificate key.
    assert re.search("No supported signature algorithm|not an Ed25519", hs.close_reason("client"))


def test_aioquic_internals_are_the_ones_we_hook() -> None:
    """Fails loudly when an aioquic upgrade moves the private code tls_hooks relies on."""
    check_internals()


def test_internals_check_notices_a_changed_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    def changed(self: tls.Context, certificate: Any, extra: int) -> None:
        raise AssertionError

    monkeypatch.setattr(tls.Context, "_set_peer_certificate", changed)
    with pytest.raises(AioquicInternalsChanged, match="_set_peer_certificate"):
        check_internals()


def test_internals_check_notices_another_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioquic, "__version__", "1.8.0")
    with pytest.raises(AioquicInternalsChanged, match=r"1\.8\.0"):
        check_internals()


def test_connection_terminated_is_what_pending_close_reports(alice: Identity) -> None:
    conn = PinnedQuicConnection(
        configuration=_config(alice, is_client=True), expected_peer=alice.node_id
    )
    conn.connect(("x", 0), 0.0)
    conn.close(error_code=7, reason_phrase="bye")
    closing = pending_close(conn)
    assert isinstance(closing, ConnectionTerminated)
    assert (closing.error_code, closing.reason_phrase) == (7, "bye")


def _bytes_sent_in_ms_steps(hs: Handshake, steps: int) -> list[int]:
    """Stream 4 MiB client -> server, waking both every millisecond as asyncio does."""
    client, server = hs.client, hs.server
    assert server is not None
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"\xa5" * (4 << 20))
    sent: list[int] = []
    now = 1.0
    for _ in range(steps):
        datagrams = client.datagrams_to_send(now)
        sent.append(sum(len(data) for data, _ in datagrams))
        for data, _ in datagrams:
            server.receive_datagram(data, ("client", 0), now)
        server.handle_timer(now)  # delayed ACKs are due after 1 ms
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, ("server", 0), now)
        now += 0.001
    return sent


def test_pacer_bursts_cover_the_event_loops_millisecond(alice: Identity, bob: Identity) -> None:
    """asyncio wakes a paced connection >= 1 ms later: a fast path must not be held to
    aioquic's 16-packet bursts (19 MB/s) per wake-up."""
    hs = Handshake(
        _config(alice, is_client=True), bob.node_id, _config(bob, is_client=False), alice.node_id
    )
    hs.run()
    assert hs.completed("client")
    assert hs.completed("server")
    assert isinstance(hs.client._loss._pacer, TimerAwarePacer)
    per_ms = _bytes_sent_in_ms_steps(hs, 40)
    # Stock aioquic sends ~20 kB per wake-up here (0.8 MB in 40 ms); the window allows it all.
    assert sum(per_ms) >= 4 << 20, per_ms


def test_pacer_still_paces_a_slow_path() -> None:
    pacer = TimerAwarePacer(max_datagram_size=1200)
    pacer.update_rate(congestion_window=12_000, smoothed_rtt=0.1)  # 120 kB/s
    stock = QuicPacketPacer(max_datagram_size=1200)
    stock.update_rate(congestion_window=12_000, smoothed_rtt=0.1)
    assert pacer.bucket_max == stock.bucket_max > PACING_BURST
    assert pacer.packet_time == stock.packet_time


def _initial_gaps(client: PinnedQuicConnection, probes: int) -> list[float]:
    """Seconds between the client's Initial flights when every one of them is lost."""
    now, sent = 0.0, []
    client.connect(("peer", 0), now)
    for _ in range(probes + 1):
        if client.datagrams_to_send(now):
            sent.append(now)
        timer = client.get_timer()
        assert timer is not None
        now = timer
        client.handle_timer(now)
    return [b - a for a, b in itertools.pairwise(sent)]


def test_probe_timeout_backoff_is_capped_before_the_handshake(alice: Identity) -> None:
    # aioquic alone doubles the wait after each lost flight (0.2, 0.4, ... 6.4 s): at 40 % loss
    # a handshake took 14 s. Capped: the client keeps probing at least every second.
    bob = Identity.generate()
    capped = PinnedQuicConnection(
        configuration=_config(alice, is_client=True), expected_peer=bob.node_id
    )
    gaps = _initial_gaps(capped, 8)
    assert len(gaps) == 8
    assert max(gaps) <= 1.0 + 1e-6
    assert gaps[0] < gaps[-1]  # it still backs off up to the cap
    uncapped = PinnedQuicConnection(
        configuration=_config(alice, is_client=True),
        expected_peer=bob.node_id,
        handshake_pto_max=1000.0,
    )
    assert max(_initial_gaps(uncapped, 6)) > 5.0  # 6.4 s (8 would pass the idle timeout)
