"""Command-line entry points: `fleet` (keys and daemons) and `fleetctl` (admin)."""
