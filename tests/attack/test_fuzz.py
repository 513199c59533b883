"""Attack: hostile bytes at every decoder of outside input (harness/attack/decoders.py).

Expected: each input is accepted or refused with the decoder's documented error; no foreign
exception, no input that takes long. CI runs a fixed seed and a bounded count; the long run is
`python -m bench.attack fuzz --count 1000000`.
"""

from __future__ import annotations

import json

import pytest

from harness.attack.decoders import TARGETS
from harness.attack.fuzzing import Mutator, Target, fuzz

COUNT = 20_000
SEED = 10
SLOWEST = 1.0  # seconds for one input: far above any decoder here, far below a hang


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_decoder_refuses_hostile_input_only_with_its_documented_errors(target: Target) -> None:
    starts = fuzz(target, len(target.samples()), SEED)  # the valid samples alone, as they are
    assert starts.foreign == 0, starts.findings
    assert starts.accepted > 0, "no sample is accepted: the mutations would test little"
    result = fuzz(target, COUNT, SEED)
    print(json.dumps({"attack": "fuzz", **result.figures()}))
    found = "\n".join(f"{f.error}\n  input {f.data!r}" for f in result.findings)
    assert result.findings == [], found
    assert result.slowest < SLOWEST
    assert result.refused > COUNT // 2  # most mutations must really be damaging


def test_the_same_seed_gives_the_same_inputs() -> None:
    samples = [b"\x93\x01\x02\x03", b"hello"]
    first, again = Mutator(samples, 7), Mutator(samples, 7)
    assert [first.next() for _ in range(500)] == [again.next() for _ in range(500)]
    other = Mutator(samples, 8)
    assert [other.next() for _ in range(50)] != [Mutator(samples, 7).next() for _ in range(50)]


def test_an_undocumented_exception_is_reported_with_its_input() -> None:
    def fragile(data: bytes) -> None:
        if len(data) > 3 and data[3] == 0xFF:
            raise KeyError("oops")
        if not data:
            raise ValueError("empty")

    result = fuzz(Target("fragile", lambda: [b"abcd"], fragile, (ValueError,)), 5_000, 1)
    assert result.foreign > 0
    assert result.foreign + result.refused + result.accepted == 5_000
    finding = result.findings[0]
    assert finding.data[3] == 0xFF
    assert finding.error.startswith("KeyError: 'oops' at ")
