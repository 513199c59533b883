"""Peer addresses as users write them: `NODEID`, `NODEID@HOST:PORT`, `NODEID@H1:P1@H2:P2`.

The node id is what is authenticated; the addresses are only hints of where to try first.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet.identity import InvalidNodeId, NodeId
from fleet.netaddr import InvalidAddress, format_host_port, parse_host_port


class InvalidPeerAddr(ValueError):
    """Text that is not a peer address; the message names what is wrong."""


@dataclass(frozen=True, slots=True)
class PeerAddr:
    node_id: NodeId
    addrs: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(cls, text: str) -> PeerAddr:
        node_text, *addr_texts = text.strip().split("@")
        try:
            node_id = NodeId.parse(node_text)
        except InvalidNodeId as exc:
            raise InvalidPeerAddr(f"{text!r}: bad node id: {exc}") from exc
        addrs = []
        for addr_text in addr_texts:
            try:
                addrs.append(parse_host_port(addr_text))
            except InvalidAddress as exc:
                raise InvalidPeerAddr(f"{text!r}: {exc}") from exc
        return cls(node_id, tuple(addrs))

    def __str__(self) -> str:
        return "@".join([str(self.node_id), *(format_host_port(h, p) for h, p in self.addrs)])
