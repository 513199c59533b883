"""Jittered exponential backoff ("full jitter"), so a fleet that lost its coordinator or
cache at the same moment does not come back in lockstep."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based): uniform in [cap/2, cap]."""
        cap = min(self.maximum, self.initial * self.factor ** min(attempt, 32))
        draw = (rng or random).random()
        return cap / 2 + draw * cap / 2
