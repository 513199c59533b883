"""Layer 5: the mesh. An Endpoint dials and accepts QUIC connections by node id, over direct
UDP or a relay, with TLS pinned to node ids (see docs/mesh.md)."""

from fleet.mesh.config import MeshConfig
from fleet.mesh.connection import (
    ConnectError,
    Connection,
    ConnectionLost,
    MeshError,
    StreamReset,
    StreamWriter,
)
from fleet.mesh.endpoint import Endpoint
from fleet.mesh.paths import Path, PathChanged, PathTiming
from fleet.mesh.relay import RelayFactory, RelayRunner, RelayTransport

__all__ = [
    "ConnectError",
    "Connection",
    "ConnectionLost",
    "Endpoint",
    "MeshConfig",
    "MeshError",
    "Path",
    "PathChanged",
    "PathTiming",
    "RelayFactory",
    "RelayRunner",
    "RelayTransport",
    "StreamReset",
    "StreamWriter",
]
