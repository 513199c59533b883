"""Refused admin requests as audit records that cost an attacker's bytes nothing to store.

Anyone who reaches the coordinator can send admin requests, certified or not, valid or
garbage, so what a refusal leaves in the (append-only) audit log must not grow with what was
sent: a refusal is recorded as the request's size and SHA-256, who sent it, what it claimed
to be and why it was refused; never the request's bytes. Records are rate-limited by token
buckets, per key and, for keys without a valid certificate, globally; a refusal over a
limit is only counted, and each window of suppressed refusals becomes one summary entry
("N refusals from K keys suppressed, total bytes B"). Everything here is sans-IO (time is
passed in) and bounded: the tables of buckets and of keys counted in a window hold at most
`RefusalLimits.tracked_keys` keys.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet.protocol.messages import AdminRequest
from fleet.relay.ratelimit import TokenBucket
from fleet.wire import SignedEnvelope, WireError, decode
from fleet.wire.fields import clip

REASON_MAX = 300  # characters of a refusal reason kept in the audit log
TEXT_MAX = 200  # characters of any other text value of a refusal's detail
ITEMS_MAX = 16  # list items of a refusal's detail
SUMMARY_TOP = 8  # keys named in a suppression summary, by number of refusals


@dataclass(frozen=True)
class RefusalLimits:
    """How many refusal records the audit log takes, per key and from outsiders overall."""

    per_key_rate: float = 0.1  # records per second per key (one every 10 s) ...
    per_key_burst: float = 10.0  # ... after a burst of this many
    global_rate: float = 0.2  # records per second of keys without a valid certificate ...
    global_burst: float = 100.0  # ... after a burst of this many
    window: float = 60.0  # suppressed refusals are summed up at least this often
    tracked_keys: int = 4096  # buckets, and keys counted in a summary, kept at most


@dataclass(frozen=True)
class RequestFacts:
    """What is recorded of a refused request instead of its bytes."""

    size: int
    sha256: bytes | None  # None: the body was not read (over the size cap, never arrived)

    @classmethod
    def of(cls, raw: bytes) -> RequestFacts:
        return cls(len(raw), hashlib.sha256(raw).digest())

    def detail(self) -> dict[str, Any]:
        return {
            "request_size": self.size,
            "request_sha256": self.sha256.hex() if self.sha256 is not None else None,
        }


@dataclass
class _Counted:
    refusals: int = 0
    bytes: int = 0


@dataclass
class Suppression:
    """Refusals counted but not recorded since `since`."""

    since: float
    refusals: int = 0
    bytes: int = 0
    keys: dict[str, _Counted] = field(default_factory=dict)
    keys_overflow: bool = False  # more distinct keys than tracked_keys

    def reason(self) -> str:
        keys = f"{len(self.keys)}{'+' if self.keys_overflow else ''}"
        return (
            f"{self.refusals} refusals from {keys} key{'s' if keys != '1' else ''} suppressed, "
            f"total bytes {self.bytes}"
        )

    def detail(self, until: float) -> dict[str, Any]:
        top = sorted(self.keys.items(), key=lambda kv: (-kv[1].refusals, kv[0]))[:SUMMARY_TOP]
        return {
            "code": "rate-limited",
            "reason": self.reason(),
            "suppressed": self.refusals,
            "keys": len(self.keys),
            "keys_overflow": self.keys_overflow,
            "bytes": self.bytes,
            "since": self.since,
            "until": until,
            "top": [{"key": k, "refusals": c.refusals, "bytes": c.bytes} for k, c in top],
        }


class RefusalLimiter:
    """Decides which refusals are recorded; counts the others until they are summed up."""

    def __init__(self, limits: RefusalLimits | None = None) -> None:
        self.limits = limits or RefusalLimits()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._global: TokenBucket | None = None
        self.suppressed: Suppression | None = None

    def admit(self, key: str, size: int, *, certified: bool, now: float) -> bool:
        """True: record this refusal. False: it was counted into the current suppression.

        Keys with a valid certificate spend only their own bucket, so a flood from outsiders
        cannot hide an insider's refused attempt.
        """
        limits = self.limits
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(limits.per_key_rate, limits.per_key_burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > limits.tracked_keys:
                self._buckets.popitem(last=False)  # a forgotten key starts full; the global
                # bucket still bounds what many fresh keys can record together
        else:
            self._buckets.move_to_end(key)
        if certified:
            admitted = bucket.take(1, now)
        else:
            if self._global is None:
                self._global = TokenBucket(limits.global_rate, limits.global_burst, now)
            admitted = bucket.refill(now) >= 1 and self._global.take(1, now)
            if admitted:
                bucket.take(1, now)
        if not admitted:
            self._count(key, size, now)
        return admitted

    def _count(self, key: str, size: int, now: float) -> None:
        window = self.suppressed
        if window is None:
            window = self.suppressed = Suppression(since=now)
        window.refusals += 1
        window.bytes += size
        counted = window.keys.get(key)
        if counted is None:
            if len(window.keys) >= self.limits.tracked_keys:
                window.keys_overflow = True
                return
            counted = window.keys[key] = _Counted()
        counted.refusals += 1
        counted.bytes += size

    def take_summary(self, now: float, *, force: bool = False) -> Suppression | None:
        """The suppression to record now (its window is over, or `force`), and reset it."""
        window = self.suppressed
        if window is None or (not force and now - window.since < self.limits.window):
            return None
        self.suppressed = None
        return window


def bounded_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """A refusal's detail with every text clipped and every list cut, marked if anything was.

    Details of refusals carry values from the request (targets, store paths, names), so
    their size is bounded here whatever the request held.
    """
    clipped = False

    def bound(value: Any, depth: int) -> Any:
        nonlocal clipped
        if isinstance(value, str):
            if len(value) > TEXT_MAX:
                clipped = True
            return clip(value, TEXT_MAX)
        if isinstance(value, list | tuple):
            if len(value) > ITEMS_MAX:
                clipped = True
            return [bound(v, depth + 1) for v in list(value)[:ITEMS_MAX]]
        if isinstance(value, Mapping):
            if depth > 2 or len(value) > ITEMS_MAX:
                clipped = True
            if depth > 2:
                return {}
            items = list(value.items())[:ITEMS_MAX]
            return {clip(str(k), TEXT_MAX): bound(v, depth + 1) for k, v in items}
        if value is None or isinstance(value, bool | int | float):
            return value
        clipped = True
        return clip(repr(value), TEXT_MAX)

    out = {clip(str(k), TEXT_MAX): bound(v, 1) for k, v in list(detail.items())[:ITEMS_MAX]}
    if "reason" in detail:
        out["reason"] = clip(str(detail["reason"]), REASON_MAX)
    if clipped or len(detail) > ITEMS_MAX:
        out["clipped"] = True
    return out


def claimed_type(raw: bytes) -> str | None:
    """The request type a (possibly unverified) admin request says it carries, if readable.

    Only for the record of a refusal: nothing here is trusted, and the signature is not
    checked (the refusal says why it was refused).
    """
    try:
        envelope = decode(raw, SignedEnvelope)
        request = decode(envelope.payload, AdminRequest)
        name = decode(request.body).wire_type
    except (WireError, ValueError, TypeError):
        return None
    return clip(name, TEXT_MAX) if name else None
