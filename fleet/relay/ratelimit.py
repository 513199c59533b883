"""Token buckets: how a relay tells a busy client from an abusive one without blocking either."""

from __future__ import annotations


class TokenBucket:
    """`rate` units per second, at most `burst` saved up. Time is passed in (sans-IO)."""

    __slots__ = ("_burst", "_last", "_rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self._rate = rate
        self._burst = burst
        self.tokens = burst
        self._last = now

    def refill(self, now: float) -> float:
        """Add what accrued since the last call; return the tokens now available.

        Hot loops refill once per batch, spend from a local copy and store `tokens` back.
        """
        elapsed = now - self._last
        if elapsed > 0:
            self.tokens = min(self._burst, self.tokens + elapsed * self._rate)
            self._last = now
        return self.tokens

    def take(self, amount: float, now: float) -> bool:
        """Spend `amount` tokens if there are enough; False (and nothing spent) otherwise."""
        if amount <= self.refill(now):
            self.tokens -= amount
            return True
        return False


class LeakyCounter:
    """A level that rises by what is added and drains at `rate` per second.

    Used for "sustained abuse": dropped bytes pour in, the level drains at the rate limit, so
    only a client that keeps sending well over its limit ever reaches the threshold.
    """

    __slots__ = ("_last", "_level", "_rate")

    def __init__(self, rate: float, now: float) -> None:
        self._rate = rate
        self._level = 0.0
        self._last = now

    def add(self, amount: float, now: float) -> float:
        elapsed = now - self._last
        if elapsed > 0:
            self._level = max(0.0, self._level - elapsed * self._rate)
            self._last = now
        self._level += amount
        return self._level
