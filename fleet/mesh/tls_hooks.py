"""The one place that reaches into aioquic's private internals (aioquic is pinned ==1.7.2).

aioquic has no public API for what a mesh needs: the server must *request* a client
certificate, and each side must pin the peer's certificate key to a node id instead of
checking it against a CA. We get both by swapping the class of the connection's TLS context
for a subclass that overrides three private methods. More small reaches: how much of a
stream's data is unacknowledged (`drain()` backpressure), why a connection is closing (to fail
`connect()` at once), a retransmit-now kick after the path changed (`kick`), and a pacer
whose bursts match asyncio's timer resolution (`TimerAwarePacer`).

`check_internals()` runs at import and fails loudly if an aioquic upgrade moved any of it;
tests/unit/mesh/test_tls_hooks.py checks the behaviour end to end.
"""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Callable
from typing import Any

import aioquic
from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketRecovery
from aioquic.quic.stream import QuicStreamSender
from cryptography.exceptions import InvalidSignature

from fleet.identity import Identity, NodeId
from fleet.identity.certs import (
    CertificateKeyError,
    node_id_of_certificate,
    private_key,
    self_signed_certificate,
)

AIOQUIC_VERSION = "1.7.2"

# (class, private method) -> the parameter names our overrides rely on.
_HOOKED_METHODS: dict[tuple[type, str], tuple[str, ...]] = {
    (tls.Context, "_set_peer_certificate"): ("self", "certificate"),
    (tls.Context, "_server_handle_certificate"): ("self", "input_buf"),
    (tls.Context, "_server_handle_finished"): ("self", "input_buf", "output_buf"),
    (QuicConnection, "_initialize"): ("self", "peer_cid"),
    (QuicConnection, "_replenish_connection_ids"): ("self",),
    (QuicPacketRecovery, "reschedule_data"): ("self", "now", "speed_up_handshake"),
    (QuicPacketPacer, "update_rate"): ("self", "congestion_window", "smoothed_rtt"),
    (QuicPacketRecovery, "on_loss_detection_timeout"): ("self", "now"),
    (QuicPacketRecovery, "get_probe_timeout"): ("self", "include_max_ack_delay"),
}


class AioquicInternalsChanged(RuntimeError):
    """The installed aioquic is not the one whose internals fleet.mesh hooks."""


def check_internals() -> None:
    """Raise AioquicInternalsChanged unless every private hook point looks as expected."""
    problems: list[str] = []
    if aioquic.__version__ != AIOQUIC_VERSION:
        problems.append(f"aioquic {aioquic.__version__} installed, hooks written for 1.7.2")
    for (cls, name), params in _HOOKED_METHODS.items():
        method = getattr(cls, name, None)
        if method is None:
            problems.append(f"{cls.__name__}.{name} is gone")
            continue
        got = tuple(inspect.signature(method).parameters)
        if got != params:
            problems.append(f"{cls.__name__}.{name}{got} expected {params}")
    ctx = tls.Context(is_client=False)
    for attr in (
        "_request_client_certificate",
        "_peer_certificate",
        "_verify_mode",
        "_supported_groups",
        "_signature_algorithms",
    ):
        if not hasattr(ctx, attr):
            problems.append(f"tls.Context has no attribute {attr}")
    if not hasattr(QuicStreamSender(0, True), "_buffer"):
        problems.append("QuicStreamSender has no _buffer")
    pacer = QuicPacketPacer(max_datagram_size=1200)
    if not hasattr(pacer, "bucket_max"):
        problems.append("QuicPacketPacer has no bucket_max")
    recovery_init = inspect.getsource(QuicPacketRecovery.__init__)
    for attr in ("self._pacer = QuicPacketPacer(", "self._pto_count", "self.handshake_confirmed"):
        if attr not in recovery_init:
            problems.append(f"QuicPacketRecovery.__init__ sets no {attr}")
    init_source = inspect.getsource(QuicConnection.__init__)
    for attr in (
        "self._streams",
        "self._close_event",
        "self._loss",
        "self._handshake_complete",
        "self._host_cids",
        "self._peer_cid",
        "self._peer_cid_available",
        "self._spaces",
    ):
        if attr not in init_source:
            problems.append(f"QuicConnection.__init__ sets no {attr}")
    if problems:
        raise AioquicInternalsChanged("; ".join(problems))


check_internals()


class PeerCertificateRejected(tls.AlertBadCertificate):
    """The peer's certificate does not carry the node id we pin (or no valid node key)."""


class ClientCertificateMissing(tls.Alert):
    """A client that sent no certificate: every mesh peer must prove its node id."""

    description = tls.AlertDescription.certificate_required


class _PinnedContext(tls.Context):
    """tls.Context that pins the peer certificate key to a node id.

    `fleet_expected` is the node id the peer must have (the client: the id it dialled; the
    server: the node the packets came from). `fleet_peer` is set once a certificate carrying
    that key and self-signed by it has been seen; it proves nothing until the handshake
    completes (CertificateVerify and Finished are checked after it).
    """

    fleet_expected: NodeId
    fleet_peer: NodeId | None

    def _set_peer_certificate(self, certificate: Any) -> None:
        super()._set_peer_certificate(certificate)
        cert = self._peer_certificate
        assert cert is not None
        try:
            node_id = node_id_of_certificate(cert)
        except CertificateKeyError as exc:
            raise PeerCertificateRejected(str(exc)) from exc
        try:
            cert.verify_directly_issued_by(cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PeerCertificateRejected(
                f"peer certificate for node {node_id.short()} is not self-signed by that key"
            ) from exc
        if node_id != self.fleet_expected:
            raise PeerCertificateRejected(f"peer is node {node_id}, expected {self.fleet_expected}")
        self.fleet_peer = node_id

    def _server_handle_certificate(self, input_buf: Buffer) -> None:
        super()._server_handle_certificate(input_buf)
        if self._peer_certificate is None:
            raise ClientCertificateMissing("client sent no certificate; a node id is required")

    def _server_handle_finished(self, input_buf: Buffer, output_buf: Buffer) -> None:
        # Belt and braces: never finish a server handshake without a pinned client.
        if self.fleet_peer is None:
            raise ClientCertificateMissing("client was not authenticated")
        super()._server_handle_finished(input_buf, output_buf)


# asyncio never sleeps less than 1 ms: the epoll selector rounds every timeout *up* to whole
# milliseconds. aioquic's pacer lets a burst of at most 16 packets leave and then asks to be
# woken a few microseconds later; we are woken >= 1 ms later, so a fast path (loopback, LAN)
# was capped at 16 packets per millisecond (19 MB/s with 1200-byte packets) whatever its
# congestion window. Bursts of PACING_BURST (in seconds of the pacing rate) cover the timer's
# resolution; paths slower than that (WAN: big RTT or small window) are paced as before.
PACING_BURST = 0.002


class TimerAwarePacer(QuicPacketPacer):
    """aioquic's pacer with a token bucket at least PACING_BURST deep."""

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        self.bucket_max = max(self.bucket_max, PACING_BURST)


# aioquic doubles the probe timeout (PTO) after every timeout, and before the handshake is
# confirmed nothing resets the count (the client cannot know the server validated its
# address), so on a lossy link every lost flight doubles the wait: 0.2, 0.4, ... 6.4 s.
# At 40 % loss a handshake took 14 s (issue 10). Before the handshake is confirmed we cap
# the backed-off PTO at `handshake_pto_max` seconds: handshake flights are a few packets, so
# probing on a steady beat costs little and keeps a lossy link's handshake within seconds.
DEFAULT_HANDSHAKE_PTO_MAX = 1.0


class HandshakeCappedRecovery(QuicPacketRecovery):
    """aioquic's loss recovery with the PTO backoff capped until the handshake is confirmed."""

    fleet_pto_max: float

    def on_loss_detection_timeout(self, *, now: float) -> None:
        super().on_loss_detection_timeout(now=now)
        if not self.handshake_confirmed:
            base = self.get_probe_timeout(include_max_ack_delay=False)
            while self._pto_count > 0 and base * 2**self._pto_count > self.fleet_pto_max:
                self._pto_count -= 1


class PinnedQuicConnection(QuicConnection):
    """A QuicConnection whose TLS pins the peer to `expected_peer` on both sides."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        expected_peer: NodeId,
        handshake_pto_max: float = DEFAULT_HANDSHAKE_PTO_MAX,
        reset_token: Callable[[bytes], bytes] | None = None,
        **kwargs: Any,
    ) -> None:
        self._fleet_expected = expected_peer
        self._fleet_reset_token = reset_token
        super().__init__(configuration=configuration, **kwargs)
        self._loss._pacer.__class__ = TimerAwarePacer
        self._loss.__class__ = HandshakeCappedRecovery
        assert isinstance(self._loss, HandshakeCappedRecovery)
        self._loss.fleet_pto_max = handshake_pto_max
        if reset_token is not None and not self._is_client:
            # The token a server advertises for its first connection id (transport
            # parameter): derived, so a restarted process can still send it (mesh/reset.py).
            first = self._host_cids[0]
            first.stateless_reset_token = reset_token(first.cid)

    def _replenish_connection_ids(self) -> None:
        """aioquic's, with tokens derived from our key instead of random ones."""
        super()._replenish_connection_ids()
        derive = self._fleet_reset_token
        if derive is not None:
            for host_cid in self._host_cids:
                if not host_cid.was_sent:
                    host_cid.stateless_reset_token = derive(host_cid.cid)

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        context = self.tls
        context.__class__ = _PinnedContext
        assert isinstance(context, _PinnedContext)
        context.fleet_expected = self._fleet_expected
        context.fleet_peer = None
        context._verify_mode = ssl.CERT_NONE  # the key is pinned instead of chain-checked
        # Mesh peers all speak X25519 and Ed25519: offering one key share instead of four
        # (P-256, P-384, X25519, X448) saves three key generations per handshake.
        context._supported_groups = [tls.Group.X25519]
        context._signature_algorithms = [tls.SignatureAlgorithm.ED25519]
        if not self._is_client:
            context._request_client_certificate = True

    @property
    def verified_peer(self) -> NodeId | None:
        """The peer's node id, but only once the handshake has completed."""
        context = getattr(self, "tls", None)
        if not isinstance(context, _PinnedContext):
            return None
        if context.state not in (tls.State.CLIENT_POST_HANDSHAKE, tls.State.SERVER_POST_HANDSHAKE):
            return None
        return context.fleet_peer


def quic_configuration(
    identity: Identity,
    *,
    is_client: bool,
    alpns: list[str],
    idle_timeout: float,
    max_datagram_size: int,
    max_data: int,
    max_stream_data: int,
) -> QuicConfiguration:
    """QUIC settings for one side of a mesh connection, with this node's certificate."""
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=alpns,
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
        max_data=max_data,
        max_stream_data=max_stream_data,
        verify_mode=ssl.CERT_NONE,
    )
    config.certificate = self_signed_certificate(identity)
    config.private_key = private_key(identity)
    return config


def send_backlog(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to a stream and not yet acknowledged by the peer (0 if unknown)."""
    stream = quic._streams.get(stream_id)
    if stream is None:
        return 0
    return len(stream.sender._buffer)


def awaiting_ack(quic: QuicConnection) -> bool:
    """Whether an ack-eliciting packet we sent is still unacknowledged (and not declared
    lost). Counted per packet number space: aioquic's congestion-control `bytes_in_flight`
    can keep a few bytes for good after a Retry, which would look like data waiting."""
    return any(space.ack_eliciting_in_flight for space in quic._spaces.values())


def peer_reset_tokens(quic: QuicConnection) -> list[bytes]:
    """The stateless reset tokens the peer gave for the connection ids we may address."""
    tokens = [quic._peer_cid.stateless_reset_token]
    tokens.extend(cid.stateless_reset_token for cid in quic._peer_cid_available)
    return [t for t in tokens if t]


def pending_close(quic: QuicConnection) -> ConnectionTerminated | None:
    """The reason a connection is closing, as soon as it starts to (aioquic only reports
    ConnectionTerminated after the closing period, up to 3 PTOs later)."""
    event = quic._close_event
    return event if isinstance(event, ConnectionTerminated) else None


def kick(quic: QuicConnection, now: float) -> None:
    """Retransmit the oldest unacknowledged packet and send a probe now.

    Called when the path under a connection changed: packets lost on the dead path would
    otherwise wait for the next PTO, which has backed off exponentially by then (seconds).
    """
    if quic._handshake_complete and quic._close_event is None:
        quic._loss.reschedule_data(now=now)
