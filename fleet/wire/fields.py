"""Field types of message schemas: how each Python annotation is checked and put on the wire.

Each supported annotation compiles to a FieldType that validates a Python value and converts it
to what msgpack packs canonically (`to_wire`), and validates a decoded msgpack object strictly
and converts it back (`from_wire`). Errors are SchemaErrors whose path is filled in on the way
out; limits bound sizes and nesting so hostile input costs little.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any

from fleet.identity import NodeId
from fleet.identity.nodeid import NODE_ID_LEN
from fleet.wire.errors import MalformedMessage, SchemaDefinitionError, SchemaError

_INT_MIN, _INT_MAX = -(1 << 63), (1 << 64) - 1  # what msgpack can carry


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a decoder accepts (and an encoder produces), against hostile input."""

    max_depth: int = 32  # nested containers and messages
    max_items: int = 65_536  # elements of one list or entries of one dict
    max_str_len: int = 1 << 20  # bytes of UTF-8
    max_bin_len: int = 1 << 20


DEFAULT_LIMITS = Limits()


class Map:
    """A decoded msgpack map, kept as its list of pairs so order and duplicates can be checked."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        self.pairs = pairs


_KIND = {bool: "bool", int: "int", float: "float", str: "str", bytes: "bytes", list: "array"}


def kind(value: object) -> str:
    if value is None:
        return "nil"
    if isinstance(value, Map):
        return "map"
    return _KIND.get(type(value), type(value).__name__)


def wrong(expected: str, value: object) -> SchemaError:
    return SchemaError(f"expected {expected}, got {kind(value)}")


class FieldType:
    """Checks and converts one field's value between Python and msgpack-ready objects."""

    name: str = "?"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        raise NotImplementedError

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        raise NotImplementedError


class _Bool(FieldType):
    name = "bool"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if type(value) is not bool:
            raise wrong(self.name, value)
        return value

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        return self.to_wire(obj, depth, limits)


class _Int(FieldType):
    name = "int"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong(self.name, value)
        if not _INT_MIN <= value <= _INT_MAX:
            raise SchemaError("int out of range (-2**63 .. 2**64-1)")
        return int(value)

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        if type(obj) is not int:
            raise wrong(self.name, obj)
        return obj


class _Float(FieldType):
    name = "float"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong(self.name, value)
        return float(value)

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        if type(obj) is not float:
            raise wrong(self.name, obj)
        return obj


class _Str(FieldType):
    name = "str"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if not isinstance(value, str):
            raise wrong(self.name, value)
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise SchemaError("text is not encodable as UTF-8 (lone surrogate)") from None
        if size > limits.max_str_len:
            raise SchemaError(f"text of {size} bytes exceeds the limit of {limits.max_str_len}")
        return str(value)

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        if type(obj) is not str:
            raise wrong(self.name, obj)
        return obj


class _Bytes(FieldType):
    name = "bytes"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if not isinstance(value, bytes):
            raise wrong(self.name, value)
        if len(value) > limits.max_bin_len:
            raise SchemaError(f"{len(value)} bytes exceed the limit of {limits.max_bin_len}")
        return bytes(value)

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        if type(obj) is not bytes:
            raise wrong(self.name, obj)
        return obj


class _NodeId(FieldType):
    name = "NodeId"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if not isinstance(value, NodeId):
            raise wrong(self.name, value)
        return value.raw

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        if type(obj) is not bytes:
            raise wrong(f"{self.name} (bytes)", obj)
        if len(obj) != NODE_ID_LEN:
            raise SchemaError(f"a NodeId is {NODE_ID_LEN} bytes, got {len(obj)}")
        return NodeId(obj)


class _Enum(FieldType):
    def __init__(self, enum: type[Enum], owner: str) -> None:
        self.enum = enum
        self.name = enum.__name__
        value_types = {type(m.value) for m in enum}
        if len(value_types) != 1 or not value_types <= {int, str, bytes}:
            raise SchemaDefinitionError(
                f"{owner}: enum {enum.__name__} needs values that are all int, all str or all bytes"
            )
        (self.value_type,) = value_types
        self.by_value = {m.value: m for m in enum}

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if not isinstance(value, self.enum):
            raise wrong(self.name, value)
        return value.value

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        if type(obj) is not self.value_type:
            raise wrong(f"{self.name} ({self.value_type.__name__})", obj)
        member = self.by_value.get(obj)
        if member is None:
            raise SchemaError(f"{short(obj)} is not a valid {self.name}")
        return member


class _Optional(FieldType):
    def __init__(self, inner: FieldType) -> None:
        self.inner = inner
        self.name = f"{inner.name} | None"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        return None if value is None else self.inner.to_wire(value, depth, limits)

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        return None if obj is None else self.inner.from_wire(obj, depth, limits)


def enter(depth: int, limits: Limits) -> int:
    if depth >= limits.max_depth:
        raise SchemaError(f"nested deeper than {limits.max_depth} levels")
    return depth + 1


def _check_items(count: int, limits: Limits) -> None:
    if count > limits.max_items:
        raise SchemaError(f"{count} items exceed the limit of {limits.max_items}")


class _Sequence(FieldType):
    def __init__(self, inner: FieldType, container: type[list[Any]] | type[tuple[Any, ...]]):
        self.inner = inner
        self.container = container
        self.name = f"list[{inner.name}]" if container is list else f"tuple[{inner.name}, ...]"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if not isinstance(value, list | tuple):
            raise wrong(self.name, value)
        return self._convert(value, self.inner.to_wire, depth, limits, list)

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        if type(obj) is not list:
            raise wrong(self.name, obj)
        return self._convert(obj, self.inner.from_wire, depth, limits, self.container)

    @staticmethod
    def _convert(items: Any, convert: Any, depth: int, limits: Limits, out: Any) -> Any:
        _check_items(len(items), limits)
        depth = enter(depth, limits)
        result = []
        for index, item in enumerate(items):
            try:
                result.append(convert(item, depth, limits))
            except SchemaError as exc:
                raise exc.within(f"[{index}]") from None
        return result if out is list else out(result)


class _Dict(FieldType):
    def __init__(self, inner: FieldType) -> None:
        self.inner = inner
        self.name = f"dict[str, {inner.name}]"

    def to_wire(self, value: Any, depth: int, limits: Limits) -> Any:
        if not isinstance(value, dict):
            raise wrong(self.name, value)
        _check_items(len(value), limits)
        depth = enter(depth, limits)
        out = {}
        for key in sorted(value, key=_sort_key):  # code point order == UTF-8 byte order
            out[key] = self._entry(key, value[key], self.inner.to_wire, depth, limits)
        return out

    def from_wire(self, obj: Any, depth: int, limits: Limits) -> Any:
        if not isinstance(obj, Map):
            raise wrong(self.name, obj)
        _check_items(len(obj.pairs), limits)
        depth = enter(depth, limits)
        out: dict[str, Any] = {}
        previous: str | None = None
        for key, item in obj.pairs:
            if type(key) is not str:
                raise SchemaError(f"dict keys must be str, got {kind(key)}")
            if previous is not None and key <= previous:
                raise MalformedMessage(
                    "dict keys are duplicated or not sorted (not canonical encoding)"
                )
            previous = key
            out[key] = self._entry(key, item, self.inner.from_wire, depth, limits)
        return out

    @staticmethod
    def _entry(key: str, item: Any, convert: Any, depth: int, limits: Limits) -> Any:
        try:
            return convert(item, depth, limits)
        except SchemaError as exc:
            raise exc.within(f"[{short(key)}]") from None


def _sort_key(key: object) -> str:
    if not isinstance(key, str):
        raise SchemaError(f"dict keys must be str, got {kind(key)}")
    return key


_SCALARS: dict[object, FieldType] = {
    bool: _Bool(),
    int: _Int(),
    float: _Float(),
    str: _Str(),
    bytes: _Bytes(),
    NodeId: _NodeId(),
}


def field_type(tp: Any, owner: str, nested: Callable[[Any], FieldType | None]) -> FieldType:
    """Compile an annotation; `nested` handles message classes (it knows what a message is)."""
    scalar = _SCALARS.get(tp)
    if scalar is not None:
        return scalar
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _Enum(tp, owner)
    custom = nested(tp)
    if custom is not None:
        return custom
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and len(args) == 2:
            return _Optional(field_type(others[0], owner, nested))
    elif origin is list and len(args) == 1:
        return _Sequence(field_type(args[0], owner, nested), list)
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _Sequence(field_type(args[0], owner, nested), tuple)
    elif origin is dict and len(args) == 2 and args[0] is str:
        return _Dict(field_type(args[1], owner, nested))
    raise SchemaDefinitionError(
        f"{owner}: unsupported field type {tp!r} (use bool, int, float, str, bytes, NodeId, "
        "an Enum, a Message, T | None, list[T], tuple[T, ...] or dict[str, T])"
    )


def short(value: object, limit: int = 40) -> str:
    """A value for an error message: its repr, clipped (input may be huge or hostile)."""
    return clip(repr(value), limit)


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
