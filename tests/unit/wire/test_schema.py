"""Message schemas: strict, canonical, versioned; every bad input is a typed, readable error."""

from __future__ import annotations

import dataclasses
import math
from datetime import timedelta
from enum import Enum
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings

from fleet.identity import NodeId
from fleet.wire import (
    Limits,
    MalformedMessage,
    Message,
    SchemaDefinitionError,
    SchemaError,
    UnexpectedMessageType,
    UnknownMessageType,
    UnsupportedVersion,
    WireError,
    decode,
    encode,
    registered_types,
)
from tests.unit.wire.wire_messages import (
    NODE,
    Blob,
    Color,
    Everything,
    Labels,
    Level,
    Marker,
    Ping,
    PingV2,
    Point,
    Pong,
    Tree,
    everything,
    sample_everything,
)


def pack(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


def with_field(msg: Message, name: str, wire_value: Any) -> bytes:
    """The encoding of `msg` with one field replaced by a raw msgpack value."""
    names = [f.name for f in dataclasses.fields(msg)]  # type: ignore[arg-type]
    obj = msgpack.unpackb(encode(msg))
    obj[2 + names.index(name)] = wire_value
    return pack(obj)


def error_text(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    return str(exc_info.value)


# --- round trips ------------------------------------------------------------------------------


def test_every_field_type_round_trips() -> None:
    msg = sample_everything()
    back = decode(encode(msg), Everything)
    assert back == msg
    assert isinstance(back.points, tuple)
    assert isinstance(back.names, list)
    assert back.color is Color.GREEN
    assert back.level is Level.HIGH
    assert back.marker is Marker.B
    assert back.node == NODE
    assert isinstance(back.node, NodeId)
    assert back.labels == {"a": 1, "b": 2, "ä": 3}


@settings(deadline=timedelta(seconds=2))
@given(everything)
def test_random_messages_round_trip_canonically(msg: Everything) -> None:
    data = encode(msg)
    back = decode(data)
    assert back == msg
    assert encode(back) == data


def test_recursive_schema_round_trips() -> None:
    tree = Tree(
        label="root", children=[Tree(label="a"), Tree(label="b", children=[Tree(label="c")])]
    )
    assert decode(encode(tree), Tree) == tree


def test_nan_encodes_deterministically() -> None:
    msg = dataclasses.replace(sample_everything(), ratio=math.nan)
    data = encode(msg)
    assert encode(msg) == data
    assert math.isnan(decode(data, Everything).ratio)


# --- canonical form ---------------------------------------------------------------------------


def test_known_encoding() -> None:
    """The wire form, spelled out byte by byte: other implementations must produce exactly this."""
    assert encode(Ping(nonce=300)) == bytes.fromhex("93a9" + b"test.ping".hex() + "01cd012c")
    assert encode(Labels(labels={"b": 1, "a": 2})) == bytes.fromhex(
        "93ab" + b"test.labels".hex() + "0182a16102a16201"
    )
    assert encode(Blob(data=b"\x00")) == bytes.fromhex("93a9" + b"test.blob".hex() + "01c40100")


def test_same_message_same_bytes() -> None:
    a = sample_everything()
    b = dataclasses.replace(a, labels=dict(reversed(list(a.labels.items()))))
    assert a == b
    assert encode(a) == encode(b)
    # An int given for a float field is sent as a float, like any other float.
    assert encode(dataclasses.replace(a, ratio=2)) == encode(dataclasses.replace(a, ratio=2.0))


def test_non_canonical_int_rejected() -> None:
    data = bytes.fromhex("93a9" + b"test.ping".hex() + "01cc05")  # 5 as uint8, not fixint
    assert msgpack.unpackb(data) == ["test.ping", 1, 5]
    with pytest.raises(MalformedMessage, match=r"test\.ping: not in canonical encoding"):
        decode(data)


def test_single_precision_float_rejected() -> None:
    obj = msgpack.unpackb(encode(sample_everything()))
    data = bytes(msgpack.packb(obj, use_bin_type=True, use_single_float=True))
    with pytest.raises(MalformedMessage, match="not in canonical encoding"):
        decode(data)


@pytest.mark.parametrize(
    "wire",
    [
        bytes.fromhex("82a16201a16102"),  # unsorted
        bytes.fromhex("82a16101a16102"),  # duplicate key
    ],
)
def test_dict_keys_must_be_sorted_and_unique(wire: bytes) -> None:
    data = bytes.fromhex("93ab") + b"test.labels" + b"\x01" + wire
    with pytest.raises(MalformedMessage, match="dict keys are duplicated or not sorted"):
        decode(data)


# --- malformed input --------------------------------------------------------------------------


PING = encode(Ping(nonce=5))


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "truncated message"),
        (PING[:-1], "truncated message"),
        (PING + b"\x00", "trailing bytes after the message"),
        (b"\xc1", "not valid msgpack (reserved type byte)"),
        (b"\x91" * 5000, "msgpack nested too deeply"),
        (bytes.fromhex("93a2fffe0101"), "text that is not valid UTF-8"),
        (PING[:-1] + bytes.fromhex("d40100"), "not valid msgpack"),  # ext type
        (PING[:-1] + bytes.fromhex("d6ff00000000"), "not valid msgpack"),  # timestamp ext
        (pack({"type": "test.ping"}), "a message is an array [type, version, fields...]"),
        (pack(["test.ping"]), "a message is an array [type, version, fields...]"),
        (pack(5), "a message is an array [type, version, fields...]"),
        (pack([1, 1, 5]), "a message starts with its type (str) and version (int)"),
        (pack(["test.ping", "1", 5]), "a message starts with its type (str) and version (int)"),
    ],
)
def test_malformed_input(data: bytes, problem: str) -> None:
    with pytest.raises(MalformedMessage) as exc_info:
        decode(data)
    assert problem in error_text(exc_info)


def test_unknown_type() -> None:
    with pytest.raises(UnknownMessageType, match=r"unknown message type 'test\.nope'"):
        decode(pack(["test.nope", 1, 5]))


def test_error_messages_do_not_echo_large_input() -> None:
    with pytest.raises(UnknownMessageType) as exc_info:
        decode(pack(["x" * 100_000, 1]))
    assert len(error_text(exc_info)) < 100
    with pytest.raises(SchemaError) as schema_info:
        decode(with_field(sample_everything(), "color", "y" * 100_000))
    assert len(error_text(schema_info)) < 120
    assert "is not a valid Color" in error_text(schema_info)


# --- versions ---------------------------------------------------------------------------------


def test_versions_live_side_by_side() -> None:
    assert decode(encode(Ping(nonce=1))) == Ping(nonce=1)
    assert decode(encode(PingV2(nonce=1, note="hi"))) == PingV2(nonce=1, note="hi")
    assert registered_types()["test.ping"] == {1: Ping, 2: PingV2}


def test_unknown_version_rejected() -> None:
    with pytest.raises(UnsupportedVersion, match=r"test\.ping version 3 \(this node speaks 1, 2\)"):
        decode(pack(["test.ping", 3, 5]))


def test_expected_type_enforced() -> None:
    with pytest.raises(UnsupportedVersion, match=r"test\.ping version 2: expected version 1"):
        decode(encode(PingV2(nonce=1, note="x")), Ping)
    with pytest.raises(UnexpectedMessageType, match=r"expected test\.ping, got test\.pong"):
        decode(encode(Pong(nonce=1)), Ping)
    with pytest.raises(UnknownMessageType, match=r"unknown message type 'test\.nope'"):
        decode(pack(["test.nope", 1]), Ping)


# --- schema violations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (pack(["test.pong", 1]), "test.pong: missing field 'nonce'"),
        (pack(["test.pong", 1, 1, 2]), "test.pong: 2 fields where 1 are defined"),
        (pack(["test.pong", 1, True]), "test.pong.nonce: expected int, got bool"),
        (pack(["test.pong", 1, "7"]), "test.pong.nonce: expected int, got str"),
        (pack(["test.pong", 1, None]), "test.pong.nonce: expected int, got nil"),
        (pack(["test.pong", 1, 1.0]), "test.pong.nonce: expected int, got float"),
        (
            pack(["test.tree", 1, "root", [["a", []], [5, []]]]),
            "test.tree.children[1].label: expected str, got int",
        ),
        (
            pack(["test.tree", 1, "root", [["a"]]]),
            "test.tree.children[0]: missing field 'children'",
        ),
        (pack(["test.labels", 1, {"a": "x"}]), "test.labels.labels['a']: expected int, got str"),
        (pack(["test.labels", 1, [1]]), "test.labels.labels: expected dict[str, int], got array"),
        (pack(["test.window", 1, 5, 1]), "test.window: rejected by Window: a window ends after"),
    ],
)
def test_schema_violation(data: bytes, text: str) -> None:
    with pytest.raises(SchemaError) as exc_info:
        decode(data)
    assert error_text(exc_info).startswith(text)


@pytest.mark.parametrize(
    ("field", "wire_value", "text"),
    [
        ("flag", 1, "flag: expected bool, got int"),
        ("ratio", 1, "ratio: expected float, got int"),
        ("name", b"x", "name: expected str, got bytes"),
        ("blob", "x", "blob: expected bytes, got str"),
        ("node", b"\x00" * 31, "node: a NodeId is 32 bytes, got 31"),
        ("node", "a" * 52, "node: expected NodeId (bytes), got str"),
        ("color", "blue", "color: 'blue' is not a valid Color"),
        ("color", 1, "color: expected Color (str), got int"),
        ("level", 3, "level: 3 is not a valid Level"),
        ("level", True, "level: expected Level (int), got bool"),
        ("marker", "a", "marker: expected Marker (bytes), got str"),
        ("maybe", "x", "maybe: expected int, got str"),
        ("names", ["a", 1], "names[1]: expected str, got int"),
        ("points", [[1, 2], [1]], "points[1]: missing field 'y'"),
        ("points", [[1, 2], {"x": 1}], "points[1]: expected Point (array), got map"),
        ("labels", {1: 1}, "labels: dict keys must be str, got int"),
        ("nested", [[b"x", "y"]], "nested[0][1]: expected bytes, got str"),
        ("corner", [1, 2, 3], "corner: 3 fields where 2 are defined"),
        ("scores", {"a": [1.0, "x"]}, "scores['a'][1]: expected float, got str"),
    ],
)
def test_field_violation_names_the_field(field: str, wire_value: Any, text: str) -> None:
    with pytest.raises(SchemaError) as exc_info:
        decode(with_field(sample_everything(), field, wire_value))
    assert error_text(exc_info) == f"test.everything.{text}"


@pytest.mark.parametrize(
    ("msg", "text"),
    [
        (Pong(nonce="7"), "test.pong.nonce: expected int, got str"),  # type: ignore[arg-type]
        (Pong(nonce=True), "test.pong.nonce: expected int, got bool"),
        (Pong(nonce=2**64), "test.pong.nonce: int out of range"),
        (Pong(nonce=-(2**63) - 1), "test.pong.nonce: int out of range"),
        (PingV2(nonce=1, note="\ud800"), "test.ping.note: text is not encodable as UTF-8"),
        (Tree(label="x", children=[Point(x=1, y=2)]), "test.tree.children[0]: expected Tree, got"),  # type: ignore[list-item]
    ],
)
def test_encode_rejects_values_outside_the_schema(msg: Message, text: str) -> None:
    with pytest.raises(SchemaError) as exc_info:
        encode(msg)
    assert error_text(exc_info).startswith(text)


def test_extremes_of_int_range_round_trip() -> None:
    for nonce in (-(2**63), -1, 0, 2**64 - 1):
        assert decode(encode(Pong(nonce=nonce)), Pong).nonce == nonce


# --- limits -----------------------------------------------------------------------------------


def deep_tree(depth: int) -> Tree:
    tree = Tree(label="leaf")
    for _ in range(depth):
        tree = Tree(label="node", children=[tree])
    return tree


def test_nesting_depth_is_limited() -> None:
    tree = deep_tree(20)  # 40 levels: a list and a message per step
    with pytest.raises(SchemaError, match="nested deeper than 32 levels"):
        encode(tree)
    wide = Limits(max_depth=64)
    data = encode(tree, limits=wide)
    assert decode(data, Tree, limits=wide) == tree
    with pytest.raises(SchemaError, match="nested deeper than 32 levels"):
        decode(data)


def test_container_length_is_limited() -> None:
    small = Limits(max_items=20)
    msg = dataclasses.replace(sample_everything(), names=["a"] * 21)
    with pytest.raises(SchemaError, match="names: 21 items exceed the limit of 20"):
        encode(msg, limits=small)
    with pytest.raises(MalformedMessage, match="21 exceeds max_array_len"):
        decode(encode(msg), limits=small)
    big_dict = Labels(labels={str(i): i for i in range(21)})
    with pytest.raises(MalformedMessage, match="21 exceeds max_map_len"):
        decode(encode(big_dict), limits=small)


def test_str_and_bin_lengths_are_limited() -> None:
    small = Limits(max_str_len=16, max_bin_len=8)
    with pytest.raises(MalformedMessage, match="17 exceeds max_str_len"):
        decode(encode(PingV2(nonce=1, note="x" * 17)), limits=small)
    with pytest.raises(MalformedMessage, match="9 exceeds max_bin_len"):
        decode(encode(Blob(data=b"x" * 9)), limits=small)
    with pytest.raises(SchemaError, match=r"test\.blob\.data: 9 bytes exceed the limit of 8"):
        encode(Blob(data=b"x" * 9), limits=small)
    assert decode(encode(Blob(data=b"x" * 8)), limits=small) == Blob(data=b"x" * 8)


# --- definitions ------------------------------------------------------------------------------


class Mixed(Enum):
    A = 1
    B = "b"


def test_duplicate_type_and_version_rejected_at_definition() -> None:
    with pytest.raises(SchemaDefinitionError, match=r"test\.ping version 1 is already defined by"):

        class Again(Message, type="test.ping", version=1):
            nonce: int

    assert registered_types()["test.ping"][1] is Ping


@pytest.mark.parametrize(
    "annotation", ["set[int]", "dict[int, int]", "int | str", "list", "object", "Mixed"]
)
def test_unsupported_field_types_rejected_at_definition(annotation: str) -> None:
    with pytest.raises(SchemaDefinitionError, match="Odd"):
        type("Odd", (Message,), {"__annotations__": {"value": annotation}, "__module__": __name__})


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"type": "Bad Name", "version": 1}, "must be lowercase words"),
        ({"type": "test.ok", "version": 0}, "version must be an int"),
        ({"type": "test.ok"}, "give both type= and version="),
    ],
)
def test_bad_type_declarations(kwargs: dict[str, Any], text: str) -> None:
    with pytest.raises(SchemaDefinitionError, match=text):
        type("Odd", (Message,), {"__annotations__": {"value": "int"}}, **kwargs)


def test_records_are_only_fields() -> None:
    with pytest.raises(TypeError, match="Point has no wire type"):
        encode(Point(x=1, y=2))
    with pytest.raises(TypeError, match="Point is a record"):
        decode(PING, Point)


def test_messages_are_immutable_and_keyword_only() -> None:
    ping = Ping(nonce=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ping.nonce = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Ping(1)  # type: ignore[call-arg]


def test_every_decode_error_is_a_wire_error() -> None:
    for cls in (MalformedMessage, SchemaError, UnknownMessageType, UnsupportedVersion):
        assert issubclass(cls, WireError)
    assert not issubclass(SchemaDefinitionError, WireError)
