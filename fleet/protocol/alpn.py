"""ALPN names: one per application protocol on the mesh, versioned in the name."""

AGENT = "fleet/agent/1"  # agent <-> coordinator: announcements down, status up
ADMIN = "fleet/admin/1"  # fleetctl <-> coordinator: signed admin requests
