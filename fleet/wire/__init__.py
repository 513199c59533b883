"""Layer 2: the wire format (msgpack schemas, framing, signed envelopes)."""

from fleet.wire.envelope import (
    SignedEnvelope,
    open_envelope,
    seal,
    sign_envelope,
    verify_envelope,
)
from fleet.wire.errors import (
    BadEnvelope,
    BadEnvelopeSignature,
    FrameTooLarge,
    MalformedMessage,
    SchemaDefinitionError,
    SchemaError,
    TruncatedFrame,
    UnexpectedMessageType,
    UnknownMessageType,
    UnsupportedVersion,
    WireError,
)
from fleet.wire.framing import (
    MAX_FRAME,
    ByteReader,
    ByteWriter,
    FrameDecoder,
    encode_frame,
    read_frame,
    write_frame,
)
from fleet.wire.schema import (
    DEFAULT_LIMITS,
    Limits,
    Message,
    decode,
    encode,
    registered_types,
)
from fleet.wire.tags import Tag

__all__ = [
    "DEFAULT_LIMITS",
    "MAX_FRAME",
    "BadEnvelope",
    "BadEnvelopeSignature",
    "ByteReader",
    "ByteWriter",
    "FrameDecoder",
    "FrameTooLarge",
    "Limits",
    "MalformedMessage",
    "Message",
    "SchemaDefinitionError",
    "SchemaError",
    "SignedEnvelope",
    "Tag",
    "TruncatedFrame",
    "UnexpectedMessageType",
    "UnknownMessageType",
    "UnsupportedVersion",
    "WireError",
    "decode",
    "encode",
    "encode_frame",
    "open_envelope",
    "read_frame",
    "registered_types",
    "seal",
    "sign_envelope",
    "verify_envelope",
    "write_frame",
]
