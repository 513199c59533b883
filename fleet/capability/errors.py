"""Why a capability chain, a use of authority, or a revocation is refused.

Each refusal is its own type with a stable `code` (sent upstream in ErrorReply and
AnnouncementRejected, so scripts can tell them apart) and a message that names what is
missing: which action, which device or scope, which certificate expired or was revoked.
"""

from __future__ import annotations


class CapabilityError(Exception):
    """Authority that cannot be accepted; `code` says which rule failed."""

    code = "capability"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownRoot(CapabilityError):
    """The chain does not start at a configured trust root (or is empty for a non-root)."""

    code = "unknown-root"


class BrokenLink(CapabilityError):
    """A certificate that does not verify, or does not follow from the one before it."""

    code = "broken-link"


class NotDelegable(CapabilityError):
    """A certificate issued by a holder that may not delegate (no may_delegate or no grant)."""

    code = "not-delegable"


class Widened(CapabilityError):
    """A link grants more than its issuer holds: actions, scope or lifetime."""

    code = "widened"

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message)
        self.what = what  # "actions", "scope" or "lifetime"


class Expired(CapabilityError):
    """A certificate of the chain is past its not_after (or before its not_before)."""

    code = "expired"


class Revoked(CapabilityError):
    """A certificate of the chain has been revoked."""

    code = "revoked"


class ActionNotAllowed(CapabilityError):
    """The chain is valid but does not grant this action."""

    code = "action"


class OutOfScope(CapabilityError):
    """The chain is valid but this device is outside its scope."""

    code = "scope"


class NotSubject(CapabilityError):
    """The chain was issued to another key than the one that signed the request."""

    code = "not-subject"


class BadRevocation(CapabilityError):
    """A revocation that does not verify or whose signer has no authority over the target."""

    code = "bad-revocation"
