"""The real `fleetctl` process against a stand-in coordinator on a real mesh Endpoint.

The stand-in (tests/admin_standin.py) speaks the admin protocol from fleet.protocol over
QUIC on loopback; fleetctl runs as users run it, a separate process started from the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.identity import Identity, NodeId, write_new_key
from fleet.mesh import Connection, Endpoint, MeshError
from fleet.protocol.alpn import ADMIN
from fleet.protocol.messages import AgentState, DeviceInfo, ErrorReply
from fleet.relay.client import relay_client_factory
from fleet.vocabulary import Action
from harness.cli import cli_env, fleetctl_argv
from harness.relay_process import start_relay
from tests.admin_standin import StandIn, desired, device_status
from tests.terminal import Terminal

STORE = "/nix/store/" + "f" * 32 + "-nixos-system-v2"
TIMEOUT = 30.0


@dataclass
class Fleet:
    standin: StandIn
    address: tuple[str, int]
    key_path: Path
    admin: Identity
    devices: list[DeviceInfo]

    @property
    def coordinator(self) -> str:
        host, port = self.address
        return f"{self.standin.identity.node_id}@{host}:{port}"

    def argv(self, *args: str) -> list[str]:
        return fleetctl_argv("--coordinator", self.coordinator, "--key", str(self.key_path), *args)

    def id_of(self, name: str) -> NodeId:
        return next(d.node_id for d in self.devices if d.name == name)


async def _serve_connection(standin: StandIn, conn: Connection) -> None:
    async with asyncio.TaskGroup() as streams:
        while True:
            try:
                reader, writer = await conn.accept_bi()
            except MeshError:
                return
            streams.create_task(standin.serve_stream(reader, writer))


async def _serve(standin: StandIn, endpoint: Endpoint) -> None:
    async with asyncio.TaskGroup() as conns:
        while True:
            conn = await endpoint.accept(ADMIN)
            conns.create_task(_serve_connection(standin, conn))


@contextlib.asynccontextmanager
async def _standin_fleet(tmp_path: Path, relay_urls: list[str]) -> AsyncIterator[Fleet]:
    coordinator = Identity.generate()
    key_path = tmp_path / "admin.key"
    admin = write_new_key(key_path)
    devices = [
        DeviceInfo(
            node_id=Identity.generate().node_id,
            name=name,
            tags=("kiosk",) if name.startswith("kiosk") else (),
            approved=True,
            first_seen=1_700_000_000.0,
            last_seen=1_700_000_100.0,
        )
        for name in ("kiosk-1", "kiosk-2", "router")
    ]
    standin = StandIn(identity=coordinator, admins={admin.node_id}, devices=list(devices))
    async with Endpoint(
        coordinator,
        bind=("127.0.0.1", 0),
        alpns=[ADMIN],
        relay_urls=relay_urls,
        relay_factory=relay_client_factory,
    ) as endpoint:
        server = asyncio.create_task(_serve(standin, endpoint))
        try:
            yield Fleet(standin, endpoint.bound_address, key_path, admin, devices)
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with _standin_fleet(tmp_path, []) as f:
        yield f


async def _fleetctl(argv: list[str], timeout: float = TIMEOUT) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_devices_list_over_the_mesh(fleet: Fleet) -> None:
    code, out, err = await _fleetctl(fleet.argv("devices", "list", "--json"))
    assert code == 0, err
    doc = json.loads(out)
    assert [(d["name"], d["id"]) for d in doc] == [(d.name, str(d.node_id)) for d in fleet.devices]


async def test_push_prints_the_sequence_and_sends_a_signed_announcement(fleet: Fleet) -> None:
    fleet.standin.next_sequence = 5
    code, out, err = await _fleetctl(
        fleet.argv("push", STORE, "--to", "tag:kiosk", "--action", "test", "--json")
    )
    assert code == 0, err
    kiosks = [fleet.id_of("kiosk-1"), fleet.id_of("kiosk-2")]
    assert json.loads(out) == {
        "sequence": 5,
        "devices": [str(k) for k in kiosks],
        "cache_check": {"result": "not-configured"},
    }
    # the stand-in verified the envelope's Tag.ANNOUNCEMENT signature when it took the push
    [(signer, announcement)] = fleet.standin.pushes
    assert signer == fleet.admin.node_id
    assert announcement.sequence == 5
    assert announcement.selector == ("kiosk",)  # signed as a tag, checked by each agent
    assert announcement.devices_count == 0
    assert announcement.store_path == STORE
    assert announcement.action is Action.TEST
    assert fleet.standin.push_requests[-1].targets == ("tag:kiosk",)


async def test_error_reply_is_shown_on_stderr(fleet: Fleet) -> None:
    fleet.standin.refuse = ErrorReply(code="not-found", message="no device named 'printer'")
    code, out, err = await _fleetctl(fleet.argv("devices", "remove", "printer"))
    assert code == 1
    assert out == ""
    assert "coordinator refused (not-found): no device named 'printer'" in err


async def test_a_key_that_is_not_an_admin_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    write_new_key(other)
    argv = fleetctl_argv("--coordinator", fleet.coordinator, "--key", str(other), "status")
    code, _, err = await _fleetctl(argv)
    assert code == 1
    assert "coordinator refused (unauthorized)" in err


async def test_unreachable_coordinator_fails_within_the_timeout(tmp_path: Path) -> None:
    key = tmp_path / "admin.key"
    write_new_key(key)
    nobody = Identity.generate().node_id
    argv = fleetctl_argv(
        "--coordinator", f"{nobody}@127.0.0.1:9", "--key", str(key), "--timeout", "1",
        "devices", "list",
    )  # fmt: skip
    code, out, err = await _fleetctl(argv, timeout=20)
    assert code == 1
    assert out == ""
    assert f"cannot reach coordinator {nobody.short()} at 127.0.0.1:9" in err


async def test_status_json_shape(fleet: Fleet) -> None:
    k1 = fleet.id_of("kiosk-1")
    fleet.standin.publish(
        device_status(
            k1, "kiosk-1", tags=("kiosk",), state=AgentState.APPLIED, sequence=2, current=STORE,
            generation=2, desired=desired(STORE, 2),
        )
    )  # fmt: skip
    code, out, err = await _fleetctl(fleet.argv("status", "--json"))
    assert code == 0, err
    [row] = json.loads(out)
    assert set(row) >= {
        "name", "id", "tags", "online", "path", "last_seen", "state", "state_since",
        "current", "desired", "error",
    }  # fmt: skip
    assert row["id"] == str(k1)
    assert row["online"] is True
    assert row["path"] == "direct"
    assert row["state"] == "applied"
    assert row["current"] == {"store_path": STORE, "generation": 2}
    assert row["desired"] == {"store_path": STORE, "sequence": 2, "action": "switch"}
    assert row["error"] is None
    assert row["last_seen"].endswith("Z")


async def _line(stream: asyncio.StreamReader) -> str:
    line = await asyncio.wait_for(stream.readline(), TIMEOUT)
    assert line, "fleetctl ended its output early"
    return line.decode()


async def test_status_watch_prints_updates_as_they_arrive(fleet: Fleet) -> None:
    k1, k2 = fleet.id_of("kiosk-1"), fleet.id_of("kiosk-2")
    fleet.standin.publish(device_status(k1, "kiosk-1", state=AgentState.IDLE))
    proc = await asyncio.create_subprocess_exec(
        *fleet.argv("status", "--watch", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        snapshot = json.loads(await _line(proc.stdout))
        assert snapshot["event"] == "snapshot"
        assert [d["id"] for d in snapshot["devices"]] == [str(k1)]
        await asyncio.wait_for(fleet.standin.watching.wait(), TIMEOUT)
        for node, name, state in [
            (k1, "kiosk-1", AgentState.DOWNLOADING),
            (k2, "kiosk-2", AgentState.FAILED),
            (k1, "kiosk-1", AgentState.APPLIED),
        ]:
            fleet.standin.publish(device_status(node, name, state=state, sequence=3))
            update = json.loads(await _line(proc.stdout))  # each change, as it happens
            assert update["event"] == "update"
            assert (update["device"]["name"], update["device"]["state"]) == (name, str(state))
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_status_watch_text_redraws_the_table(fleet: Fleet) -> None:
    k1 = fleet.id_of("kiosk-1")
    fleet.standin.publish(device_status(k1, "kiosk-1", state=AgentState.IDLE))
    proc = await asyncio.create_subprocess_exec(
        *fleet.argv("status", "--watch"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None
        assert (await _line(proc.stdout)).startswith("-- ")
        assert (await _line(proc.stdout)).startswith("NAME")
        assert "idle" in await _line(proc.stdout)
        await _line(proc.stdout)  # blank line after the table
        await asyncio.wait_for(fleet.standin.watching.wait(), TIMEOUT)
        fleet.standin.publish(device_status(k1, "kiosk-1", state=AgentState.ACTIVATING))
        assert (await _line(proc.stdout)).startswith("-- ")
        await _line(proc.stdout)
        assert "activating" in await _line(proc.stdout)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), TIMEOUT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_push_wait_follows_the_devices(fleet: Fleet) -> None:
    k1, k2 = fleet.id_of("kiosk-1"), fleet.id_of("kiosk-2")
    fleet.standin.after_push = [
        device_status(k1, "kiosk-1", state=AgentState.APPLIED, sequence=1),
        device_status(k2, "kiosk-2", state=AgentState.FAILED, sequence=1, error="unsigned path"),
    ]
    code, out, err = await _fleetctl(fleet.argv("push", STORE, "--to", "tag:kiosk", "--wait"))
    assert code == 3
    assert "kiosk-1: applied" in out
    assert "kiosk-2: failed: unsigned path" in out
    assert "1 of 2 devices did not apply sequence 1" in err
    assert "kiosk-2: failed: unsigned path" in err


async def test_reaches_the_coordinator_through_a_relay_alone(tmp_path: Path) -> None:
    relay = start_relay(tmp_path, metrics=False)
    try:
        async with _standin_fleet(tmp_path, [str(relay.url)]) as f:
            node = str(f.standin.identity.node_id)  # no address: the relay is the only way
            key = str(f.key_path)
            cmd = ("devices", "list", "--json")
            code, out, err = await _fleetctl(
                fleetctl_argv("--coordinator", node, "--key", key, *cmd)
            )
            assert code == 1
            assert "no address and no relay" in err
            code, out, err = await _fleetctl(
                fleetctl_argv(
                    "--coordinator", node, "--key", key, "--relay", str(relay.url), *cmd
                )
            )  # fmt: skip
            assert code == 0, err
            assert len(json.loads(out)) == 3
    finally:
        relay.stop()


async def test_status_watch_on_a_terminal_redraws_in_place_and_ends_on_ctrl_c(
    fleet: Fleet,
) -> None:
    k1, k2 = fleet.id_of("kiosk-1"), fleet.id_of("kiosk-2")
    fleet.standin.publish(device_status(k1, "kiosk-1", state=AgentState.IDLE))
    fleet.standin.publish(device_status(k2, "kiosk-2", state=AgentState.IDLE))
    terminal = Terminal(fleet.argv("status", "--watch"), cli_env())
    try:
        await terminal.wait_for(b"Ctrl-C to stop", TIMEOUT)
        await asyncio.wait_for(fleet.standin.watching.wait(), TIMEOUT)
        for state in (AgentState.DOWNLOADING, AgentState.ACTIVATING, AgentState.APPLIED):
            fleet.standin.publish(device_status(k1, "kiosk-1", state=state, sequence=2))
            await terminal.wait_for(f"kiosk-1  {str(k1)[:4]}".encode(), TIMEOUT)
            await terminal.wait_for(str(state).encode(), TIMEOUT)
        fleet.standin.publish(device_status(k2, "kiosk-2", state=AgentState.FAILED, error="boom"))
        await terminal.wait_for(b"boom", TIMEOUT)
        terminal.interrupt()
        assert await terminal.finish(TIMEOUT) == 0
    finally:
        terminal.close()
    output = bytes(terminal.output)
    assert b"\x1b[2K" in output
    assert b"A\x1b[2K" in output  # the cursor moved up over the last table to redraw it
    assert b"\x1b[2J" not in output  # no clearing of the screen: the scrollback stays clean
    screen = terminal.screen()
    headers = [line for line in screen if line.startswith("NAME")]
    assert len(headers) == 1, screen  # one table on the screen, not one per update
    (k1_line,) = [line for line in screen if line.startswith("kiosk-1")]
    (k2_line,) = [line for line in screen if line.startswith("kiosk-2")]
    assert "applied" in k1_line
    assert "failed" in k2_line
    assert "boom" in k2_line
    assert "Traceback" not in "\n".join(screen)
