"""`fleet agent` as a real process against a minimal coordinator stand-in on the real mesh,
with real Nix (chroot store, signed HTTP cache, fake systems)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fleet.identity import Identity, NodeId
from fleet.mesh import Connection, Endpoint, StreamWriter
from fleet.nix import NixEnv, NixStore, current_system
from fleet.protocol import alpn
from fleet.protocol.messages import (
    AgentState,
    AnnouncementRejected,
    AnnouncementV2,
    DeliverV1,
    Hello,
    StatusReport,
    Welcome,
)
from fleet.protocol.stream import recv_message, send_message
from fleet.vocabulary import Action
from fleet.wire import Message, Tag, sign_envelope
from harness.cli import cli_env, fleet_argv, run_fleet
from harness.nixlab import SWITCH_LOG_VAR, Builder, switch_log_lines
from harness.relay_process import read_log_events
from tests.conftest import NixCache, Systems

pytestmark = pytest.mark.nix

T = 30.0  # generous: two cores shared with other test runs


class AgentRig:
    def __init__(self, tmp: Path, coordinator: str, cache: NixCache, key: str) -> None:
        self.tmp = tmp
        self.key = tmp / "device.key"
        result = run_fleet("keygen", str(self.key))
        assert result.returncode == 0, result.stderr
        self.node_id = result.stdout.strip()
        self.admin = Identity.generate()
        self.store_dir = tmp / "agent" / "store"
        self.nix_env = NixEnv.hermetic(tmp / "agent" / "nix-env")
        self.store = NixStore.chroot(self.store_dir, self.nix_env)
        self.switch_log = tmp / "switch.log"
        self.argv = fleet_argv(
            "agent", "--key", str(self.key), "--coordinator", coordinator,
            "--state-dir", str(tmp / "state"), "--trust-root", str(self.admin.node_id),
            "--substituter", cache.url, "--trusted-public-key", key,
            "--nix-store", str(self.store_dir), "--listen", "127.0.0.1:0",
        )  # fmt: skip
        self.env = cli_env(
            {
                "NIX_CONF_DIR": str(self.nix_env.conf_dir),
                "XDG_CACHE_HOME": str(self.nix_env.cache_dir),
                SWITCH_LOG_VAR: str(self.switch_log),
            }
        )
        self.runs = 0

    @contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        self.runs += 1
        log = self.tmp / f"agent-{self.runs}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(self.argv, stderr=out, stdout=subprocess.DEVNULL, env=self.env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                raise
            events = read_log_events(log)
            assert code == 0, log.read_text()
            assert any(e.get("event") == "agent_started" for e in events)
            assert any(e.get("event") == "agent_stopped" for e in events)

    def deliver(self, seq: int, path: str) -> DeliverV1:
        now = time.time()
        ann = AnnouncementV2(
            sequence=seq, devices=(NodeId.parse(self.node_id),), targets=("tag:lab",),
            store_path=path, substituters=(), action=Action.SWITCH,
            issued_at=now - 1, valid_until=now + 600,
        )  # fmt: skip
        return DeliverV1(announcement=sign_envelope(self.admin, Tag.ANNOUNCEMENT, ann))


async def accept_agent(ep: Endpoint) -> tuple[Connection, asyncio.StreamReader, StreamWriter]:
    conn = await ep.accept(alpn.AGENT, timeout=T)
    reader, writer = await conn.accept_bi(timeout=T)
    return conn, reader, writer


async def statuses_until(
    reader: asyncio.StreamReader, final: set[AgentState]
) -> list[StatusReport]:
    seen: list[StatusReport] = []
    while not seen or seen[-1].state not in final:
        message: Message = await recv_message(reader, timeout=T)
        if isinstance(message, StatusReport):
            seen.append(message)
    return seen


async def test_agent_process_applies_a_delivery_and_remembers_it(
    tmp_path: Path, nix_builder: Builder, nix_systems: Systems, nix_cache: NixCache
) -> None:
    coordinator = Identity.generate()
    v1 = nix_systems.v1
    async with Endpoint(coordinator, bind=("127.0.0.1", 0), alpns=[alpn.AGENT]) as ep:
        host, port = ep.bound_address
        rig = AgentRig(
            tmp_path, f"{coordinator.node_id}@{host}:{port}", nix_cache, nix_builder.key.public_key
        )
        with rig.running():
            conn, reader, writer = await accept_agent(ep)
            assert str(conn.remote_id) == rig.node_id  # the device proved its key
            hello = await recv_message(reader, Hello, timeout=T)
            assert hello.last_sequence == 0
            assert hello.current.store_path is None
            await send_message(writer, Welcome(approved=True, name="dev"), timeout=T)
            first = await recv_message(reader, StatusReport, timeout=T)
            assert first.state is AgentState.IDLE

            await send_message(writer, rig.deliver(1, v1.path), timeout=T)
            reports = await statuses_until(
                reader, {AgentState.APPLIED, AgentState.FAILED, AgentState.ROLLED_BACK}
            )
            states = [r.state for r in reports]
            assert states[-1] is AgentState.APPLIED, reports[-1]
            for needed in (AgentState.DOWNLOADING, AgentState.ACTIVATING, AgentState.CHECKING):
                assert needed in states
            assert states.index(AgentState.DOWNLOADING) < states.index(AgentState.ACTIVATING)
            since = [r.since for r in reports]
            assert since == sorted(since)
            assert reports[-1].current.store_path == v1.path
            assert reports[-1].sequence == 1
            generation = await current_system(rig.store)
            assert generation is not None
            assert generation.path == v1.path
            assert switch_log_lines(rig.switch_log) == [f"switch {v1.path}"]
            await conn.close()

        # Restarted, it knows what it applied and refuses an older announcement.
        with rig.running():
            conn, reader, writer = await accept_agent(ep)
            hello = await recv_message(reader, Hello, timeout=T)
            assert hello.last_sequence == 1
            assert hello.state is AgentState.APPLIED
            assert hello.current.store_path == v1.path
            await send_message(writer, Welcome(approved=True, name="dev"), timeout=T)
            await recv_message(reader, StatusReport, timeout=T)
            await send_message(writer, rig.deliver(1, nix_systems.v2.path), timeout=T)
            rejected = await recv_message(reader, AnnouncementRejected, timeout=T)
            assert rejected.sequence == 1
            assert "not newer than 1" in rejected.reason
            await conn.close()
        assert switch_log_lines(rig.switch_log) == [f"switch {v1.path}"]


def test_agent_cli_refuses_incomplete_settings(tmp_path: Path) -> None:
    coordinator = str(Identity.generate().node_id)
    result = run_fleet("agent", "--coordinator", coordinator, "--key", str(tmp_path / "k"))
    assert result.returncode != 0
    assert "--trust-root" in result.stderr

    config = tmp_path / "agent.toml"
    config.write_text(f'coordinator = "{coordinator}"\nsubstituters = ["http://x"]\n')
    result = run_fleet("agent", "--config", str(config))
    assert result.returncode != 0
    assert "unknown setting 'substituters'" in result.stderr
