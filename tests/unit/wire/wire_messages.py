"""Example message schemas shared by the wire tests (a module, so each type registers once)."""

from __future__ import annotations

import dataclasses
from enum import Enum, IntEnum

from hypothesis import strategies as st

from fleet.identity import NodeId
from fleet.wire import Message, SignedEnvelope


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Marker(Enum):
    A = b"a"
    B = b"b"


class Point(Message):  # a record: only ever a field of a message
    x: int
    y: int


class Everything(Message, type="test.everything", version=1):
    flag: bool
    count: int
    ratio: float
    name: str
    blob: bytes
    node: NodeId
    color: Color
    level: Level
    marker: Marker
    maybe: int | None
    names: list[str]
    points: tuple[Point, ...]
    labels: dict[str, int]
    nested: list[list[bytes]]
    corner: Point | None
    scores: dict[str, list[float]] = dataclasses.field(default_factory=dict)


class Tree(Message, type="test.tree", version=1):
    label: str
    children: list[Tree] = dataclasses.field(default_factory=list)


class Ping(Message, type="test.ping", version=1):
    nonce: int


class PingV2(Message, type="test.ping", version=2):
    nonce: int
    note: str


class Pong(Message, type="test.pong", version=1):
    nonce: int


class Window(Message, type="test.window", version=1):
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError("a window ends after it starts")


NODE = NodeId(bytes(range(32)))

node_ids = st.binary(min_size=32, max_size=32).map(NodeId)
points = st.builds(Point, x=st.integers(-100, 100), y=st.integers(-(2**63), 2**64 - 1))
everything = st.builds(
    Everything,
    flag=st.booleans(),
    count=st.integers(-(2**63), 2**64 - 1),
    ratio=st.floats(allow_nan=False),
    name=st.text(max_size=20),
    blob=st.binary(max_size=40),
    node=node_ids,
    color=st.sampled_from(Color),
    level=st.sampled_from(Level),
    marker=st.sampled_from(Marker),
    maybe=st.none() | st.integers(-(2**63), 2**64 - 1),
    names=st.lists(st.text(max_size=5), max_size=4),
    points=st.lists(points, max_size=3).map(tuple),
    labels=st.dictionaries(st.text(max_size=6), st.integers(0, 1000), max_size=4),
    nested=st.lists(st.lists(st.binary(max_size=4), max_size=3), max_size=3),
    corner=st.none() | points,
    scores=st.dictionaries(st.text(max_size=3), st.lists(st.floats(allow_nan=False), max_size=2)),
)


def sample_everything() -> Everything:
    return Everything(
        flag=True,
        count=-5,
        ratio=0.25,
        name="zürich",
        blob=b"\x00\xff",
        node=NODE,
        color=Color.GREEN,
        level=Level.HIGH,
        marker=Marker.B,
        maybe=None,
        names=["a", ""],
        points=(Point(x=1, y=2), Point(x=-3, y=2**64 - 1)),
        labels={"b": 2, "a": 1, "ä": 3},
        nested=[[b"x"], []],
        corner=Point(x=0, y=0),
        scores={"s": [1.5]},
    )


class Labels(Message, type="test.labels", version=1):
    labels: dict[str, int]


class Blob(Message, type="test.blob", version=1):
    data: bytes


class Forward(Message, type="test.forward", version=1):
    """Carries someone else's signed envelope, as a gossiping peer would."""

    hops: int
    envelope: SignedEnvelope
