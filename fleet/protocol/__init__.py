"""Layer 6: the fleet protocol spoken over mesh connections (agent, admin <-> coordinator)."""
