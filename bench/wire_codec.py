"""Cost of the wire layer per message: encode, decode, seal, open, frame decoding.

Run: python -m bench.wire_codec   (prints a table; not a timed test)
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from enum import Enum

from fleet.identity import Identity, NodeId
from fleet.wire import FrameDecoder, Message, Tag, decode, encode, encode_frame, open_envelope, seal


class State(Enum):
    IDLE = "idle"
    DOWNLOADING = "downloading"


class Progress(Message):
    paths_done: int
    paths_total: int
    bytes_done: int


class StatusLike(Message, type="bench.status", version=1):
    """Shaped like an agent status report: a few ids, strings, an enum, a small map."""

    node: NodeId
    state: State
    system: str
    generation: int
    since: float
    progress: Progress | None
    log_tail: list[str]
    labels: dict[str, str]


def sample() -> StatusLike:
    return StatusLike(
        node=Identity.generate().node_id,
        state=State.DOWNLOADING,
        system="/nix/store/" + "a" * 32 + "-nixos-system-host-24.05",
        generation=412,
        since=1_700_000_000.25,
        progress=Progress(paths_done=120, paths_total=800, bytes_done=123_456_789),
        log_tail=[f"line {i}: activating unit foo-{i}.service" for i in range(20)],
        labels={"site": "berlin", "role": "kiosk", "ring": "canary"},
    )


def per_op(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number


def main() -> None:
    identity = Identity.generate()
    msg = sample()
    data = encode(msg)
    sealed = seal(identity, Tag.ENVELOPE, msg)
    stream = b"".join(encode_frame(data) for _ in range(1000))

    def frames() -> None:
        FrameDecoder().feed(stream)

    def sealing() -> None:
        seal(identity, Tag.ENVELOPE, msg)

    def opening() -> None:
        open_envelope(sealed, Tag.ENVELOPE, StatusLike)

    rows = [
        ("encode", per_op(lambda: encode(msg), 2000), len(data)),
        ("decode (validated)", per_op(lambda: decode(data, StatusLike), 2000), len(data)),
        ("seal (encode + sign)", per_op(sealing, 500), len(sealed)),
        ("open_envelope (verify + decode)", per_op(opening, 500), len(sealed)),
        ("FrameDecoder.feed, per frame", per_op(frames, 20) / 1000, len(data) + 4),
    ]
    print(f"{'operation':34} {'us/op':>8} {'bytes':>7}")
    for name, seconds, size in rows:
        print(f"{name:34} {seconds * 1e6:8.1f} {size:7d}")


if __name__ == "__main__":
    main()
