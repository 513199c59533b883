"""The admin side of the fleet protocol: what `fleetctl` does, without the command line.

The CLI (fleet/cli/fleetctl.py) only parses options and prints; target resolution, status
rows, JSON shapes and push tracking are pure functions here, and AdminClient talks to the
coordinator over the mesh.
"""

from fleet.admin.errors import (
    AdminError,
    CoordinatorRefused,
    CoordinatorUnreachable,
    ProtocolViolation,
    SettingsError,
    TargetError,
)

__all__ = [
    "AdminError",
    "CoordinatorRefused",
    "CoordinatorUnreachable",
    "ProtocolViolation",
    "SettingsError",
    "TargetError",
]
