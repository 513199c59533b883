"""Layer 4: the relay, forwarding opaque packets between authenticated node ids over TLS/TCP."""

from fleet.relay.client import RelayClient, RelayConnectionLost
from fleet.relay.server import RelayServer, RelayServerConfig
from fleet.relay.url import InvalidRelayUrl, RelayUrl

__all__ = [
    "InvalidRelayUrl",
    "RelayClient",
    "RelayConnectionLost",
    "RelayServer",
    "RelayServerConfig",
    "RelayUrl",
]
