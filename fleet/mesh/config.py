"""Settings of a mesh Endpoint, with defaults that suit devices behind NAT."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.mesh.paths import PathTiming
from fleet.mesh.reflexive import StunTiming

DEFAULT_MAX_CONNECTIONS = 12_288  # 10,000 agents on one coordinator, with headroom


@dataclass(frozen=True, slots=True)
class MeshConfig:
    # A QUIC PING per connection this often: keeps NAT bindings open (NAT-safe: UDP mappings
    # commonly last 30 s or more) and proves an idle direct path, with no signed disco; an
    # idle peer also learns of our restart at its next one (a stateless reset answers it).
    keepalive_interval: float = 15.0
    idle_timeout: float = 30.0  # QUIC idle timeout: a silent peer is gone after this
    paths: PathTiming = field(default_factory=PathTiming)  # heartbeat, trust, probe windows
    recv_batch: int = 256  # datagrams read per loop turn before one flush
    max_datagram_size: int = 1200  # QUIC packet size; 1200 is safe on any path
    max_data: int = 8 << 20  # QUIC connection flow-control window
    max_stream_data: int = 4 << 20  # QUIC per-stream flow-control window
    disco_max_age: float = 120.0  # tolerated clock difference for signed disco packets
    accept_backlog: int = 64  # handshaken connections waiting for accept()
    # Connections (established and half-open) from ordinary nodes: fits 10,000 agents with
    # headroom. Beyond it, `reserved_connections` more are kept for priority nodes only (the
    # coordinator's admins), and `reserved_half_open` more half-open ones beyond each of the
    # total and per-IP caps below. Refusals are counted and logged (rate-limited).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    reserved_connections: int = 64
    reserved_half_open: int = 16
    # Admission of new server connections (anyone may sign a disco Ping with a fresh key, so
    # nothing here may grow with what a stranger sends). A connection is half-open until its
    # TLS handshake completes; one that has not completed within `handshake_timeout` is
    # dropped without a reply. At most `max_half_open_per_node` half-open connections per
    # claimed node id and `max_half_open_per_ip` per source IP (relay: per relay-authenticated
    # node only); Initials beyond that are dropped (the client's retransmission tries again).
    # Once `retry_threshold` server connections are half-open in total (or
    # `retry_threshold_per_node` from the node at hand), a new one must first answer a QUIC
    # Retry (RFC 9000 8.1: proves it receives at its address, costs it one round trip, and
    # costs us no state); 0 means always, None never.
    handshake_timeout: float = 10.0
    # Before the handshake is confirmed, the QUIC probe timeout backs off to at most this
    # (aioquic doubles it without end: at 40 % loss a handshake took 14 s instead of ~1 s).
    handshake_pto_max: float = 1.0
    max_half_open_per_node: int = 8
    max_half_open_per_ip: int = 32
    max_half_open: int = 1024
    retry_threshold: int | None = 16
    retry_threshold_per_node: int | None = 2
    # Housekeeping granularity: the path layer's per-peer deadlines are rounded up to this,
    # so that many peers share one wake-up (there is no periodic walk over the peers).
    tick: float = 0.1
    socket_buffer: int = 4 << 20  # SO_RCVBUF / SO_SNDBUF wish (the kernel may cap it)
    udp_offload: bool = True  # Linux UDP_SEGMENT / UDP_GRO: fewer system calls per datagram
    # STUN: every relay we use is also asked at its host, UDP port `relay_stun_port` (the
    # relay runs `fleet relay --stun-listen HOST:3478`; None: do not ask relays), plus these
    # extra servers (IP literals or host names, resolved once).
    relay_stun_port: int | None = 3478
    stun_servers: tuple[tuple[str, int], ...] = ()
    stun: StunTiming = field(default_factory=StunTiming)
    # While a peer is only reachable over the relay, re-send our addresses (CallMeMaybe) this
    # often so both sides keep trying to upgrade; also sent whenever our STUN address changes.
    call_me_maybe_interval: float = 30.0
