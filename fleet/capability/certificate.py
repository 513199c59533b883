"""Capability certificates: a holder's signed statement that a subject key may do something.

A certificate names its issuer and subject, the actions it grants, the devices it grants
them for (its scope), when it is valid, and whether the subject may delegate further. It is
signed by the issuer in a SignedEnvelope with Tag.CAPABILITY; its id is the SHA-256 of the
signed payload (the canonical certificate bytes), so an id names exactly one certificate and
cannot be changed by anyone who cannot sign as its issuer.

Actions:
- push: sign announcements (and have the coordinator accept them) for devices in scope;
- devices: add, approve and remove devices in scope;
- grant: issue certificates (together with may_delegate) and revoke those issued under it;
- read: list devices and their status;
- audit: read and export the audit log.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections.abc import Iterable

from fleet.identity import Identity, NodeId
from fleet.wire import Message, SignedEnvelope, Tag, sign_envelope

SERIAL_LEN = 16
CERT_ID_LEN = 32


class Permission(enum.StrEnum):
    """What a certificate may grant. Values are part of the protocol."""

    PUSH = "push"
    DEVICES = "devices"
    GRANT = "grant"
    READ = "read"
    AUDIT = "audit"


ALL_PERMISSIONS = frozenset(Permission)


def parse_permissions(text: str | Iterable[str]) -> tuple[Permission, ...]:
    """`push,read` (or a list of such) -> sorted unique permissions; ValueError if unknown."""
    words = [text] if isinstance(text, str) else list(text)
    found: set[Permission] = set()
    for word in words:
        for part in word.replace(",", " ").split():
            try:
                found.add(Permission(part.strip().lower()))
            except ValueError:
                known = ", ".join(p.value for p in Permission)
                raise ValueError(f"unknown action {part!r} (known: {known})") from None
    if not found:
        raise ValueError("no action given")
    return tuple(sorted(found))


class Scope(Message):
    """The devices a certificate covers: all of them, or those with a listed tag or id.

    Fields are sorted and unique so one scope has one encoding. A device is in scope if the
    scope is `all`, its id is listed, or it carries a listed tag.
    """

    all: bool
    tags: tuple[str, ...]
    devices: tuple[NodeId, ...]

    def __post_init__(self) -> None:
        if self.all and (self.tags or self.devices):
            raise ValueError("a scope of all devices lists no tags or devices")
        if not self.all and not self.tags and not self.devices:
            raise ValueError("a scope names at least one tag or device, or is all ('*')")
        if list(self.tags) != sorted(set(self.tags)):
            raise ValueError("scope tags must be sorted and unique")
        raws = [d.raw for d in self.devices]
        if raws != sorted(set(raws)):
            raise ValueError("scope devices must be sorted and unique")
        for tag in self.tags:
            if not tag or len(tag) > 63 or any(c.isspace() or c == "," for c in tag):
                raise ValueError(f"scope tag {tag[:70]!r} is not a plain label")

    @classmethod
    def everything(cls) -> Scope:
        return cls(all=True, tags=(), devices=())

    @classmethod
    def of(cls, *, tags: Iterable[str] = (), devices: Iterable[NodeId] = ()) -> Scope:
        unique = {d.raw: d for d in devices}
        return cls(
            all=False,
            tags=tuple(sorted(set(tags))),
            devices=tuple(unique[r] for r in sorted(unique)),
        )

    @classmethod
    def parse(cls, items: str | Iterable[str]) -> Scope:
        """`*`, `tag:NAME`, `device:NODEID` or a bare NODEID, comma-separated or repeated."""
        words = [items] if isinstance(items, str) else list(items)
        parts = [p.strip() for w in words for p in w.split(",") if p.strip()]
        if not parts:
            raise ValueError("no scope given (use '*', tag:NAME or a device node id)")
        if "*" in parts:
            if len(parts) > 1:
                raise ValueError("scope '*' (all devices) cannot be combined with others")
            return cls.everything()
        tags: list[str] = []
        devices: list[NodeId] = []
        for part in parts:
            if part.startswith("tag:"):
                tags.append(part[4:])
            else:
                text = part[7:] if part.startswith("device:") else part
                try:
                    devices.append(NodeId.parse(text))
                except ValueError as exc:
                    raise ValueError(
                        f"scope {part[:70]!r}: not '*', tag:NAME or a device node id ({exc})"
                    ) from None
        return cls.of(tags=tags, devices=devices)

    def contains(self, device: NodeId, tags: Iterable[str] = ()) -> bool:
        if self.all:
            return True
        if any(hmac.compare_digest(device.raw, d.raw) for d in self.devices):
            return True
        return not set(tags).isdisjoint(self.tags)

    def within(self, outer: Scope) -> bool:
        """True if everything this scope names is named by `outer` too (no widening)."""
        if outer.all:
            return True
        if self.all:
            return False
        return set(self.tags) <= set(outer.tags) and {d.raw for d in self.devices} <= {
            d.raw for d in outer.devices
        }

    def describe(self) -> str:
        if self.all:
            return "*"
        return ",".join([f"tag:{t}" for t in self.tags] + [str(d) for d in self.devices])


class Certificate(Message, type="fleet.capability", version=1):
    """What an issuer signs (Tag.CAPABILITY): `subject` may do `actions` on `scope`."""

    issuer: NodeId
    subject: NodeId
    actions: tuple[Permission, ...]  # sorted, unique, not empty
    scope: Scope
    not_before: float  # unix seconds
    not_after: float
    may_delegate: bool  # the subject may issue certificates (it also needs `grant`)
    serial: bytes  # random, so two otherwise equal grants have different ids

    def __post_init__(self) -> None:
        if not self.actions:
            raise ValueError("a certificate grants at least one action")
        if list(self.actions) != sorted(set(self.actions)):
            raise ValueError("certificate actions must be sorted and unique")
        if not self.not_after > self.not_before:
            raise ValueError("not_after must be after not_before")
        if len(self.serial) != SERIAL_LEN:
            raise ValueError(f"serial must be {SERIAL_LEN} bytes")


def certificate_id(envelope: SignedEnvelope) -> bytes:
    """The id of a signed certificate: SHA-256 of its signed payload."""
    return hashlib.sha256(envelope.payload).digest()


def format_id(cert_id: bytes) -> str:
    return cert_id.hex()


def parse_id(text: str) -> bytes:
    """A certificate id as printed (64 hex digits); ValueError otherwise."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"{text[:80]!r} is not a certificate id (64 hex digits)") from None
    if len(raw) != CERT_ID_LEN:
        raise ValueError(f"a certificate id is {CERT_ID_LEN * 2} hex digits, got {len(raw) * 2}")
    return raw


def sign_certificate(
    issuer: Identity,
    subject: NodeId,
    actions: Iterable[Permission],
    scope: Scope,
    *,
    not_before: float,
    not_after: float,
    may_delegate: bool,
) -> SignedEnvelope:
    """Sign a certificate as `issuer`, with no checks of the issuer's own authority.

    Use fleet.capability.chain.issue to extend a chain: it refuses to widen.
    """
    cert = Certificate(
        issuer=issuer.node_id,
        subject=subject,
        actions=tuple(sorted(set(actions))),
        scope=scope,
        not_before=not_before,
        not_after=not_after,
        may_delegate=may_delegate,
        serial=os.urandom(SERIAL_LEN),
    )
    return sign_envelope(issuer, Tag.CAPABILITY, cert)
