"""Errors of the wire layer: every way bytes from a peer can be unacceptable.

A daemon catches `WireError` around anything it decodes and drops (or disconnects) the peer;
no other exception escapes a decoder. Messages name the problem (field, expected type, size)
and never echo the input, which may be large or hostile.
"""

from __future__ import annotations


class WireError(Exception):
    """Bytes from the network that cannot be accepted."""


class FrameTooLarge(WireError):
    """A frame longer than the configured cap (announced by its header, or about to be sent).

    `size` is the frame's length when known: a reader that gets this from `read_frame` has
    read only the header, so it may skip exactly that many bytes to stay in step.
    """

    def __init__(self, problem: str, size: int | None = None) -> None:
        super().__init__(problem)
        self.size = size


class TruncatedFrame(WireError):
    """The stream ended in the middle of a frame."""


class MalformedMessage(WireError):
    """Not one canonical msgpack value of the expected shape (bad msgpack, trailing bytes...)."""


class UnknownMessageType(WireError):
    """A message type name this node has no schema for."""


class UnsupportedVersion(WireError):
    """A known message type, but in a version this node does not speak."""


class UnexpectedMessageType(WireError):
    """A valid message, but not of the type the caller asked for."""


class SchemaError(WireError):
    """A message whose fields do not match its schema: missing, wrong type, out of range.

    `path` locates the field ("items[3].name"); it is filled in while the error propagates
    out of nested values, so the happy path builds no strings.
    """

    def __init__(self, problem: str, *, message_type: str = "", path: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.message_type = message_type
        self.path = path

    def within(self, segment: str) -> SchemaError:
        """Prefix the path with an outer field name or index; returns self for `raise`."""
        if not self.path:
            self.path = segment
        elif self.path.startswith("["):
            self.path = segment + self.path
        else:
            self.path = f"{segment}.{self.path}"
        return self

    def __str__(self) -> str:
        where = ".".join(p for p in (self.message_type, self.path) if p)
        return f"{where}: {self.problem}" if where else self.problem


class BadEnvelope(WireError):
    """Base of envelope errors: an envelope that cannot be accepted."""


class BadEnvelopeSignature(BadEnvelope):
    """The envelope's signature does not verify for its signer and the expected tag."""


class SchemaDefinitionError(TypeError):
    """A message class that cannot be a schema (unsupported field type, duplicate type name).

    Raised when the class is defined: a programming error, deliberately not a WireError.
    """
