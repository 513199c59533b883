"""Attack: kill -9 of the coordinator at random moments during pushes (harness/attack/kill_loop.py).

Expected: 0 acknowledged pushes lost, every acknowledged sequence stored with the store path
that push signed, no sequence acknowledged twice, and every cut-off push one clear line on stderr.
The long version: `python -m bench.attack kill-loop --cycles 100`.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.attack.kill_loop import run_kill_loop

CYCLES = 10
SEED = 10


async def test_no_acknowledged_push_is_lost_over_kill_9_cycles(tmp_path: Path) -> None:
    report = await run_kill_loop(tmp_path / "lab", cycles=CYCLES, seed=SEED)
    print(json.dumps({"attack": "kill-loop", **report.figures()}))
    assert report.cycles == CYCLES
    assert len(report.acknowledged) >= CYCLES  # the pushes really ran between the kills
    assert report.lost == []
    assert report.wrong == []
    assert report.duplicated == []
    assert report.unclear == []
    sequences = [ack.sequence for ack in report.acknowledged]
    assert len(set(sequences)) == len(sequences)
