"""Durable agent state and the retry backoff."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import pytest

from fleet.agent.backoff import Backoff
from fleet.agent.procedure import AgentRecord, Status
from fleet.agent.state import StateError, StateFile
from fleet.agent.switch_run import Purpose, SwitchRun
from fleet.identity import Identity
from fleet.protocol.messages import AgentState, AnnouncementV2, Progress
from fleet.vocabulary import Action
from fleet.wire import Tag, sign_envelope

PATH = "/nix/store/" + "d" * 32 + "-nixos-system-x"


def test_round_trip_keeps_everything(tmp_path: Path) -> None:
    admin = Identity.generate()
    env = sign_envelope(
        admin,
        Tag.ANNOUNCEMENT,
        AnnouncementV2(
            sequence=3, devices=(admin.node_id,), targets=(), store_path=PATH, substituters=(),
            action=Action.BOOT, issued_at=1.0, valid_until=2.0,
        ),
    )  # fmt: skip
    record = AgentRecord(
        applied_sequence=2,
        status=Status(
            AgentState.ROLLED_BACK,
            12.5,
            3,
            PATH,
            Progress(paths_done=1, paths_total=2, bytes_done=3, bytes_total=4),
            "exit 3",
            3,
            "tail\nlines",
        ),
        announcement=env,
        previous="/nix/store/" + "e" * 32 + "-old",
        retrying=False,
        switch=SwitchRun(
            sequence=3, system=PATH, action="boot", purpose=Purpose.ROLLBACK, attempt=2,
            started_at=12.0, boot_id="b-1", reason="exit 3", pid=42, pid_start=777,
            finished_at=12.4, exit_code=0,
        ),
    )  # fmt: skip
    state = StateFile(tmp_path / "state")
    state.save(record)
    assert state.load() == record
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.directory.stat().st_mode) == 0o700


def test_a_file_of_an_older_agent_has_no_switch_record(tmp_path: Path) -> None:
    state = StateFile(tmp_path)
    state.save(AgentRecord(applied_sequence=5))
    data = state.path.read_text().replace('"switch": null', '"unrelated": null')
    assert '"switch"' not in data
    state.path.write_text(data)
    record = state.load()
    assert record.applied_sequence == 5
    assert record.switch is None


def test_missing_file_is_a_fresh_agent(tmp_path: Path) -> None:
    record = StateFile(tmp_path).load()
    assert record.applied_sequence == 0
    assert record.status.state is AgentState.IDLE


@pytest.mark.parametrize("content", ["", "{", '{"version": 99}', '{"version": 1}', "[]"])
def test_unreadable_file_stops_the_agent_instead_of_forgetting(
    tmp_path: Path, content: str
) -> None:
    state = StateFile(tmp_path)
    state.path.write_text(content)
    with pytest.raises(StateError, match="Move the file away"):
        state.load()


def test_backoff_is_jittered_and_capped() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(10)]
    for n, delay in enumerate(delays):
        cap = min(8.0, 2.0**n)
        assert cap / 2 <= delay <= cap
    assert len({round(backoff.delay(5, rng), 6) for _ in range(20)}) > 1  # not lockstep
