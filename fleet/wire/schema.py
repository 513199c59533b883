"""Message schemas: frozen dataclasses with a stable type name and version, as canonical msgpack.

Defining a message takes one class; fields are keyword-only and immutable:

    class Ping(Message, type="example.ping", version=1):
        sender: NodeId
        nonce: int
        note: str | None = None

    data = encode(Ping(sender=me, nonce=7))
    ping = decode(data, Ping)          # -> Ping, or a WireError

Field types: bool, int (never a bool), float, str, bytes, NodeId (32 raw bytes), an Enum
whose values are all int, all str or all bytes (sent by value), `T | None`, `list[T]`,
`tuple[T, ...]`, `dict[str, T]`, and other Message classes. A class declared without
`type=`/`version=` is a record: it can only be a field of another message. To check values
beyond their type, raise ValueError in `__post_init__`; decode reports it as a SchemaError.

Wire form: a msgpack array `[type, version, field1, field2, ...]` with the fields in
declaration order; a nested message or record is just `[field1, field2, ...]`, its schema
being fixed by the field's declared type.

Canonical form, so that one message has exactly one encoding (signatures cover the bytes, and
forwarded copies of a message are byte-identical): msgpack's shortest encoding for every
int and length, floats always as float64, text as str and binary as bin, dict entries sorted
by key with no duplicates, no ext types. `decode` accepts only canonical input, so
`encode(decode(b)) == b` for every accepted `b`.

Versioning rule: a (type, version) pair names one exact schema, including everything nested
in it, and a decoder accepts exactly the pairs it has classes for. An unknown type raises
UnknownMessageType, a known type in another version UnsupportedVersion; there are no
optional trailing fields and unknown fields are never skipped. To change a message, define
a class with the same type and the next version (both classes can live side by side), and
let the sender pick a version the receiver speaks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import typing
from typing import Any, ClassVar, TypeVar, dataclass_transform, overload

import msgpack

from fleet.wire.errors import (
    MalformedMessage,
    SchemaDefinitionError,
    SchemaError,
    UnexpectedMessageType,
    UnknownMessageType,
    UnsupportedVersion,
)
from fleet.wire.fields import (
    DEFAULT_LIMITS,
    FieldType,
    Limits,
    Map,
    clip,
    enter,
    field_type,
    short,
    wrong,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "Message",
    "decode",
    "encode",
    "registered_types",
]

_TYPE_NAME = re.compile(r"[a-z][a-z0-9]*(?:[._-][a-z0-9]+)*")
_MAX_TYPE_NAME = 64
_MAX_VERSION = 0xFFFF


@dataclass_transform(
    frozen_default=True, kw_only_default=True, field_specifiers=(dataclasses.field,)
)
class Message:
    """Base of every message and record; subclasses become frozen, keyword-only dataclasses."""

    wire_type: ClassVar[str | None] = None
    wire_version: ClassVar[int | None] = None
    _wire_codec: ClassVar[_Codec | None] = None

    def __init_subclass__(
        cls, *, type: str | None = None, version: int | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)
        cls.wire_type, cls.wire_version, cls._wire_codec = None, None, None
        if (type is None) != (version is None):
            raise SchemaDefinitionError(f"{cls.__name__}: give both type= and version=, or neither")
        # An annotation may name a class defined later; then the codec is built on first use.
        with contextlib.suppress(NameError):
            cls._wire_codec = _Codec(cls)
        if type is not None and version is not None:
            _register(cls, type, version)


_REGISTRY: dict[str, dict[int, type[Message]]] = {}


def _register(cls: type[Message], type_name: str, version: int) -> None:
    if len(type_name) > _MAX_TYPE_NAME or not _TYPE_NAME.fullmatch(type_name):
        raise SchemaDefinitionError(
            f"{cls.__name__}: type name {type_name!r} must be lowercase words joined by . _ -"
        )
    if type(version) is not int or not 1 <= version <= _MAX_VERSION:
        raise SchemaDefinitionError(f"{cls.__name__}: version must be an int in 1..{_MAX_VERSION}")
    versions = _REGISTRY.setdefault(type_name, {})
    if version in versions:
        other = versions[version]
        raise SchemaDefinitionError(
            f"{cls.__name__}: {type_name} version {version} is already defined by "
            f"{other.__module__}.{other.__qualname__}"
        )
    versions[version] = cls
    cls.wire_type, cls.wire_version = type_name, version


def registered_types() -> dict[str, dict[int, type[Message]]]:
    """Every (type, version) this process can decode: type name -> version -> class."""
    return {name: dict(versions) for name, versions in _REGISTRY.items()}


class _Nested(FieldType):
    def __init__(self, cls: type[Message]) -> None:
        self.cls = cls
        self.name = cls.__name__

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if type(value) is not self.cls:
            raise wrong(self.name, value)
        return _codec(self.cls).fields_to_wire(value, enter(depth, limits), limits)

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        if type(obj) is not list:
            raise wrong(f"{self.name} (array)", obj)
        return _codec(self.cls).fields_from_wire(obj, 0, enter(depth, limits), limits)


def _nested(tp: Any) -> FieldType | None:
    if isinstance(tp, type) and issubclass(tp, Message) and tp is not Message:
        return _Nested(tp)
    return None


# --- messages -------------------------------------------------------------------------------


class _Codec:
    """A message class's fields, in wire order, with their compiled field types."""

    def __init__(self, cls: type[Message]) -> None:
        self.cls = cls
        hints = typing.get_type_hints(cls, localns={cls.__name__: cls})
        self.fields: list[tuple[str, FieldType]] = []
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            if not field.init:
                raise SchemaDefinitionError(f"{cls.__name__}.{field.name}: init=False fields")
            owner = f"{cls.__name__}.{field.name}"
            self.fields.append((field.name, field_type(hints[field.name], owner, _nested)))

    def fields_to_wire(self, msg: Message, depth: int, limits: Limits) -> list[Any]:
        out: list[Any] = []
        for name, ftype in self.fields:
            try:
                out.append(ftype.to_wire(getattr(msg, name), depth, limits))
            except SchemaError as exc:
                raise exc.within(name) from None
        return out

    def fields_from_wire(self, items: list[Any], start: int, depth: int, limits: Limits) -> Any:
        count = len(items) - start
        if count < len(self.fields):
            raise SchemaError(f"missing field {self.fields[count][0]!r}")
        if count > len(self.fields):
            raise SchemaError(f"{count} fields where {len(self.fields)} are defined")
        values: dict[str, Any] = {}
        for (name, ftype), obj in zip(self.fields, items[start:], strict=True):
            try:
                values[name] = ftype.from_wire(obj, depth, limits)
            except SchemaError as exc:
                raise exc.within(name) from None
        try:
            return self.cls(**values)
        except ValueError as exc:
            raise SchemaError(f"rejected by {self.cls.__name__}: {clip(str(exc))}") from None


def _codec(cls: type[Message]) -> _Codec:
    codec = cls.__dict__.get("_wire_codec")
    if codec is None:
        try:
            codec = _Codec(cls)
        except NameError as exc:
            raise SchemaDefinitionError(f"{cls.__name__}: cannot resolve {exc}") from exc
        cls._wire_codec = codec
    return codec


M = TypeVar("M", bound=Message)


def encode(msg: Message, *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The canonical bytes of a message; SchemaError if its values do not fit its schema."""
    cls = type(msg)
    if cls.wire_type is None:
        raise TypeError(f"{cls.__name__} has no wire type; it can only be a field of a message")
    try:
        fields = _codec(cls).fields_to_wire(msg, 0, limits)
    except SchemaError as exc:
        exc.message_type = cls.wire_type
        raise
    return bytes(msgpack.packb([cls.wire_type, cls.wire_version, *fields], use_bin_type=True))


@overload
def decode(data: bytes, expected: None = None, *, limits: Limits = ...) -> Message: ...
@overload
def decode(data: bytes, expected: type[M], *, limits: Limits = ...) -> M: ...


def decode(
    data: bytes, expected: type[Message] | None = None, *, limits: Limits = DEFAULT_LIMITS
) -> Message:
    """Parse and validate one message; any problem is a WireError naming it."""
    obj = _unpack(data, limits)
    if type(obj) is not list or len(obj) < 2:
        raise MalformedMessage("a message is an array [type, version, fields...]")
    type_name, version = obj[0], obj[1]
    if type(type_name) is not str or type(version) is not int:
        raise MalformedMessage("a message starts with its type (str) and version (int)")
    versions = _REGISTRY.get(type_name)
    if versions is None:
        raise UnknownMessageType(f"unknown message type {short(type_name)}")
    cls = versions.get(version)
    if expected is not None and cls is not expected:
        if expected.wire_type is None:
            raise TypeError(f"{expected.__name__} is a record, not a message type")
        if type_name != expected.wire_type:
            raise UnexpectedMessageType(f"expected {expected.wire_type}, got {type_name}")
        raise UnsupportedVersion(
            f"{type_name} version {version}: expected version {expected.wire_version}"
        )
    if cls is None:
        known = ", ".join(str(v) for v in sorted(versions))
        raise UnsupportedVersion(f"{type_name} version {version} (this node speaks {known})")
    try:
        msg: Message = _codec(cls).fields_from_wire(obj, 2, 0, limits)
    except SchemaError as exc:
        exc.message_type = type_name
        raise
    if encode(msg, limits=limits) != data:
        raise MalformedMessage(f"{type_name}: not in canonical encoding")
    return msg


def _unpack(data: bytes, limits: Limits) -> Any:
    try:
        return msgpack.unpackb(
            data,
            use_list=True,
            raw=False,
            strict_map_key=False,
            object_pairs_hook=Map,
            ext_hook=_no_ext,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_items,
            max_map_len=limits.max_items,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise MalformedMessage("trailing bytes after the message") from None
    except msgpack.StackError:
        raise MalformedMessage("msgpack nested too deeply") from None
    except msgpack.FormatError:
        raise MalformedMessage("not valid msgpack (reserved type byte)") from None
    except UnicodeDecodeError:
        raise MalformedMessage("text that is not valid UTF-8") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        if str(exc) == "Unpack failed: incomplete input":
            raise MalformedMessage("truncated message") from None
        raise MalformedMessage(f"not valid msgpack ({clip(str(exc))})") from None


def _no_ext(code: int, data: bytes) -> object:
    raise ValueError("msgpack ext types are not used")
