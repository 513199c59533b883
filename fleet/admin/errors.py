"""Typed errors of the admin client; each message is meant to be shown to a person as is."""

from __future__ import annotations

from fleet.config import SettingsError as SettingsError  # settings: the one type of all roles
from fleet.identity import NodeId


class AdminError(Exception):
    """Base: something an admin command could not do."""


class TargetError(AdminError):
    """A device or push target that names no device (unknown name or id, a tag nobody has)."""


class AmbiguousTarget(TargetError):
    """A short id that several known devices share; the message lists them."""

    def __init__(self, message: str, candidates: tuple[NodeId, ...]) -> None:
        super().__init__(message)
        self.candidates = candidates


class CoordinatorUnreachable(AdminError):
    """No connection to the coordinator, or it went silent, within the timeout."""


class OutcomeUnknown(CoordinatorUnreachable):
    """A request that changes something was sent but never answered: it may have been
    carried out. The message says how to find out."""


class ProtocolViolation(AdminError):
    """The coordinator answered something the protocol does not allow here."""


class CoordinatorRefused(AdminError):
    """The coordinator answered with an ErrorReply."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"coordinator refused ({code}): {message}")
        self.code = code
        self.reason = message
