"""A seeded mutation fuzzer for decoders of outside bytes, independent of fleet.

A `Target` is a decoder (`feed`), a few valid inputs to start from (`samples`) and the error
types its documentation promises (`expected`). `fuzz` feeds it random bytes and valid samples
damaged by a few mutations, drawn from `random.Random(seed)`: the same seed gives the same
inputs, so a finding replays exactly. Any other exception (an AssertionError of an invariant the
target checks included) is a *foreign* exception: the bug class that lets one packet take down
a daemon. hypothesis drives the unit fuzz tests; this runner is for millions of inputs in the
soak (`python -m bench.attack fuzz`) and a bounded, reproducible count in CI.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Bytes that sit on edges of formats: msgpack type markers, length extremes, NUL, newline.
INTERESTING_BYTES = (
    0x00,
    0x01,
    0x0A,
    0x20,
    0x3A,
    0x7F,
    0x80,
    0xC0,
    0xC1,
    0xC4,
    0xC6,
    0xCF,
    0xD3,
    0xD9,
    0xDB,
    0xDC,
    0xDD,
    0xDE,
    0xDF,
    0xFF,
)
INTERESTING_WORDS = (
    b"\x00\x00",
    b"\xff\xff",
    b"\x7f\xff",
    b"\x80\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x00\x00\x00\x00",
    b"\x00\x01\x00\x00",
)
MAX_RANDOM_LEN = 512
MAX_FINDINGS = 20  # findings kept per target (all are counted)


@dataclass(frozen=True)
class Target:
    name: str
    samples: Callable[[], Sequence[bytes]]  # valid inputs; called once per run
    feed: Callable[[bytes], object]  # decode (and check invariants); raise on refusal
    expected: tuple[type[BaseException], ...]  # the documented refusals


@dataclass(frozen=True)
class Finding:
    data: bytes
    error: str  # exception type and message, with the innermost frame


@dataclass
class FuzzResult:
    target: str
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    foreign: int = 0
    findings: list[Finding] = field(default_factory=list)
    slowest: float = 0.0  # seconds, the longest single input
    seconds: float = 0.0

    def figures(self) -> dict[str, str | int | float]:
        return {
            "target": self.target,
            "inputs": self.inputs,
            "accepted": self.accepted,
            "refused": self.refused,
            "foreign": self.foreign,
            "slowest_s": round(self.slowest, 4),
            "seconds": round(self.seconds, 2),
        }


class Mutator:
    """Inputs from `samples`: random bytes (1 in 8), else a sample with 1-6 mutations."""

    def __init__(self, samples: Sequence[bytes], seed: int) -> None:
        if not samples:
            raise ValueError("a mutator needs at least one valid sample")
        self.samples = [bytes(s) for s in samples]
        self.rng = random.Random(seed)

    def next(self) -> bytes:
        rng = self.rng
        if rng.randrange(8) == 0:
            return rng.randbytes(rng.randrange(MAX_RANDOM_LEN))
        data = bytearray(rng.choice(self.samples))
        for _ in range(rng.randint(1, 6)):
            self._mutate(data)
        return bytes(data)

    def _mutate(self, data: bytearray) -> None:
        rng = self.rng
        at = rng.randrange(len(data) + 1)
        op = rng.randrange(9)
        if op == 0 and at < len(data):  # flip one bit
            data[at] ^= 1 << rng.randrange(8)
        elif op == 1 and at < len(data):  # an edge byte
            data[at] = rng.choice(INTERESTING_BYTES)
        elif op == 2:  # an edge integer, overwriting
            word = rng.choice(INTERESTING_WORDS)
            data[at : at + len(word)] = word
        elif op == 3:  # truncate
            del data[at:]
        elif op == 4:  # insert random bytes
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 5:  # delete a run
            del data[at : at + rng.randint(1, 16)]
        elif op == 6 and data:  # duplicate a chunk in place
            end = min(len(data), at + rng.randint(1, 64))
            data[at:at] = data[at:end]
        elif op == 7:  # splice: the tail of another sample
            other = rng.choice(self.samples)
            data[at:] = other[rng.randrange(len(other) + 1) :]
        elif at < len(data):  # replace one byte
            data[at] = rng.randrange(256)


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}: {str(exc)[:200]}{where}"


def fuzz(target: Target, count: int, seed: int) -> FuzzResult:
    """Feed `count` inputs to `target`; every valid sample is fed as is first."""
    result = FuzzResult(target.name)
    samples = list(target.samples())
    mutator = Mutator(samples, seed)
    clock = time.perf_counter
    started = clock()
    for index in range(count):
        data = samples[index] if index < len(samples) else mutator.next()
        before = clock()
        try:
            target.feed(data)
        except target.expected:
            result.refused += 1
        except Exception as exc:  # the bug class under test: anything undocumented
            result.foreign += 1
            if len(result.findings) < MAX_FINDINGS:
                result.findings.append(Finding(data, _describe(exc)))
        else:
            result.accepted += 1
        result.slowest = max(result.slowest, clock() - before)
    result.inputs = count
    result.seconds = clock() - started
    return result
