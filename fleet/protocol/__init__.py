"""Layer 5: the fleet protocol spoken over mesh connections (agent, admin <-> coordinator)."""
