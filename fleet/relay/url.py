"""Relay URLs: `fleet-relay://NODEID@HOST:PORT`, the relay's identity pinned in its address.

The node id is part of the URL because the client must know which key the relay's TLS
certificate carries before it connects: that is the whole of the relay's authentication.
Plain TCP needs the explicit scheme `fleet-relay+insecure://` (loopback tests only).
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.identity import InvalidNodeId, NodeId
from fleet.netaddr import (
    InvalidAddress,
    check_host,
    check_port,
    format_host_port,
    parse_host_port,
)

SCHEME = "fleet-relay"
INSECURE_SCHEME = "fleet-relay+insecure"


class InvalidRelayUrl(ValueError):
    """Text that is not a relay URL; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class RelayUrl:
    node_id: NodeId
    host: str
    port: int
    insecure: bool = False

    def __post_init__(self) -> None:
        try:
            check_port(self.port)
        except InvalidAddress as exc:
            raise InvalidRelayUrl(f"relay {exc}") from None
        try:
            check_host(self.host)
        except InvalidAddress as exc:
            raise InvalidRelayUrl(f"relay host {exc}") from None

    @classmethod
    def parse(cls, text: str) -> RelayUrl:
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise InvalidRelayUrl(f"{text!r}: expected {SCHEME}://NODEID@HOST:PORT")
        if scheme not in (SCHEME, INSECURE_SCHEME):
            raise InvalidRelayUrl(
                f"{text!r}: unknown scheme {scheme!r}; expected {SCHEME} or {INSECURE_SCHEME}"
            )
        if any(c in rest for c in "/?#"):
            raise InvalidRelayUrl(f"{text!r}: a relay URL has no path, query or fragment")
        node_text, at, hostport = rest.partition("@")
        if not at:
            raise InvalidRelayUrl(f"{text!r}: missing the relay's node id (NODEID@HOST:PORT)")
        try:
            node_id = NodeId.parse(node_text)
        except InvalidNodeId as exc:
            raise InvalidRelayUrl(f"{text!r}: bad relay node id: {exc}") from exc
        try:
            host, port = parse_host_port(hostport)
        except InvalidAddress as exc:
            raise InvalidRelayUrl(f"{text!r}: {exc}") from exc
        try:
            return cls(node_id, host, port, insecure=scheme == INSECURE_SCHEME)
        except InvalidRelayUrl as exc:
            raise InvalidRelayUrl(f"{text!r}: {exc}") from exc

    def __str__(self) -> str:
        scheme = INSECURE_SCHEME if self.insecure else SCHEME
        return f"{scheme}://{self.node_id}@{format_host_port(self.host, self.port)}"
