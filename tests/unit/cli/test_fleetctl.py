"""The fleetctl command line over an in-memory stand-in coordinator: output, exits, settings."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from fleet.admin.client import AdminClient
from fleet.admin.settings import Settings
from fleet.admin.views import iso_utc
from fleet.capability import certificates_of, format_id, read_chain
from fleet.cli import fleetctl
from fleet.identity import (
    Identity,
    InvalidLabel,
    NodeId,
    load_identity,
    normalize_tags,
    write_new_key,
)
from fleet.protocol.messages import (
    Action,
    AgentState,
    Announcement,
    DeviceAdd,
    DeviceApprove,
    DeviceInfo,
    DeviceList,
    DeviceRemove,
    ErrorReply,
    PushRequest,
)
from fleet.protocol.targeting import target_tree
from fleet.wire import Message, Tag, verify_envelope
from tests.admin_standin import StandIn, desired, device_status, memory_client

STORE = "/nix/store/" + "d" * 32 + "-nixos-system-v2"


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.key_path = tmp_path / "admin.key"
        self.admin = write_new_key(self.key_path)
        self.standin = StandIn(identity=Identity.generate(), admins={self.admin.node_id})
        self.settings: list[Settings] = []
        self.env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
        self.devices = [
            DeviceInfo(
                node_id=Identity.generate().node_id,
                name=name,
                tags=tags,
                approved=True,
                first_seen=1_700_000_000.0,
                last_seen=1_700_000_100.0,
            )
            for name, tags in (("kiosk-1", ("kiosk",)), ("kiosk-2", ("kiosk",)), ("router", ()))
        ]
        self.standin.devices = list(self.devices)

    @property
    def coordinator(self) -> str:
        return f"{self.standin.identity.node_id}@127.0.0.1:9"

    def id_of(self, name: str) -> str:
        return next(str(d.node_id) for d in self.devices if d.name == name)

    def run(
        self, *args: str, env: dict[str, str] | None = None, global_args: bool = True
    ) -> Result:
        base = (
            ["--coordinator", self.coordinator, "--key", str(self.key_path)] if global_args else []
        )
        return CliRunner().invoke(
            fleetctl.main, [*base, *args], env={**self.env, **(env or {})}, catch_exceptions=False
        )


def _device_with_id(name: str, raw: bytes) -> DeviceInfo:
    return DeviceInfo(
        node_id=NodeId(raw), name=name, tags=(), approved=True, first_seen=None, last_seen=None
    )


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    harness = Harness(tmp_path)

    @contextlib.asynccontextmanager
    async def fake_open(identity: Identity, settings: Settings) -> AsyncIterator[AdminClient]:
        harness.settings.append(settings)
        async with memory_client(harness.standin, identity, timeout=settings.timeout) as client:
            yield client

    monkeypatch.setattr(fleetctl, "_open_client", fake_open)
    return harness


# ---------------------------------------------------------------- devices


def test_devices_list_json_and_text(h: Harness) -> None:
    result = h.run("devices", "list", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [d["name"] for d in doc] == ["kiosk-1", "kiosk-2", "router"]
    assert doc[0] == {
        "name": "kiosk-1",
        "id": h.id_of("kiosk-1"),
        "tags": ["kiosk"],
        "approved": True,
        "first_seen": "2023-11-14T22:13:20.000Z",
        "last_seen": "2023-11-14T22:15:00.000Z",
    }
    text = h.run("devices", "list").stdout.splitlines()
    assert text[0].split()[:3] == ["NAME", "ID", "TAGS"]
    assert text[3].split()[:4] == ["router", h.id_of("router"), "-", "yes"]


def _changes(h: Harness) -> list[Message]:
    """What fleetctl asked the stand-in to do, without the device-list lookups."""
    return [m for m in h.standin.received if not isinstance(m, DeviceList)]


def test_devices_add_approve_remove_send_the_requests(h: Harness) -> None:
    node = str(Identity.generate().node_id)
    result = h.run("devices", "add", node, "--name", "new", "--tag", "a", "--tag", "b")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("added new (")
    assert h.run("devices", "approve", node).exit_code == 0
    assert h.run("devices", "remove", "router").stdout == "removed router\n"
    add, approve, remove = _changes(h)
    assert isinstance(add, DeviceAdd)
    assert (add.node_id, add.name, add.tags) == (NodeId.parse(node), "new", ("a", "b"))
    assert isinstance(approve, DeviceApprove)
    assert approve.node_id == add.node_id
    assert isinstance(remove, DeviceRemove)
    assert remove.name == "router"


def test_devices_commands_take_short_ids(h: Harness) -> None:
    router = h.devices[2].node_id
    approved = h.run("devices", "approve", router.short(), "--json")
    assert approved.exit_code == 0, approved.stderr
    assert json.loads(approved.stdout) == {"name": "router", "id": str(router), "approved": True}
    removed = h.run("devices", "remove", str(router)[:6], "--json")
    assert removed.exit_code == 0, removed.stderr
    assert json.loads(removed.stdout) == {"name": "router", "id": str(router), "removed": True}
    approve, remove = _changes(h)
    assert isinstance(approve, DeviceApprove)
    assert approve.node_id == router
    assert isinstance(remove, DeviceRemove)
    assert remove.name == "router"  # the coordinator removes by name


def test_an_ambiguous_short_id_lists_the_candidates_and_changes_nothing(h: Harness) -> None:
    twins = [_device_with_id(f"twin-{i}", b"\x00" * 5 + bytes([i]) * 27) for i in (1, 2)]
    h.standin.devices += twins
    for args in (["devices", "remove", "aaaaaaaa"], ["devices", "approve", "aaaaaaaa"]):
        result = h.run(*args)
        assert result.exit_code == 1
        assert "short id of 2 devices" in result.stderr
        for twin in twins:
            assert f"{twin.name} {twin.node_id}" in result.stderr
        assert "Traceback" not in result.output
    assert _changes(h) == []
    pushed = h.run("push", STORE, "--to", "aaaa")
    assert pushed.exit_code == 1
    assert "short id of 2 devices" in pushed.stderr
    assert h.standin.pushes == []


class ListRefusing(StandIn):
    """A coordinator for a key with `devices` but neither `read` nor `push`: no device list."""

    async def _answer(self, body: Message, writer: Any) -> None:
        if isinstance(body, DeviceList):
            await self._send(writer, ErrorReply(code="unauthorized", message="may not read"))
        else:
            await super()._answer(body, writer)


def test_a_key_that_may_not_list_devices_uses_names_and_full_ids(h: Harness) -> None:
    h.standin = ListRefusing(
        identity=h.standin.identity, admins=h.standin.admins, devices=h.devices
    )
    router = h.devices[2].node_id
    assert h.run("devices", "remove", "router").stdout == "removed router\n"  # as given
    by_id = h.run("devices", "remove", str(router))
    assert by_id.exit_code == 1
    assert "give the device's name" in by_id.stderr
    short = h.run("devices", "approve", router.short())
    assert short.exit_code == 1
    assert "may not read; give the full node id" in short.stderr
    assert h.run("devices", "approve", str(router)).exit_code == 0
    assert [type(m) for m in _changes(h)] == [DeviceRemove, DeviceApprove]


def test_push_to_a_short_id_signs_the_full_id(h: Harness) -> None:
    result = h.run("push", STORE, "--to", h.devices[1].node_id.short(), "--json")
    assert result.exit_code == 0, result.stderr
    [(_, announcement)] = h.standin.pushes
    assert h.standin.push_requests[-1].devices == (h.devices[1].node_id,)
    assert announcement.devices_root == target_tree([h.devices[1].node_id]).root


def test_remove_of_an_unknown_device_names_it(h: Harness) -> None:
    result = h.run("devices", "remove", "printer")
    assert result.exit_code == 1
    assert "device 'printer': no device with that name or short id" in result.stderr
    assert _changes(h) == []


def test_a_grant_subject_must_be_a_full_node_id(h: Harness, tmp_path: Path) -> None:
    out = tmp_path / "x.chain"
    short = h.devices[0].node_id.short()
    result = h.run("grant", short, "--allow", "read", "--scope", "*", "--out", str(out))
    assert result.exit_code == 2
    assert "looks like a short id" in result.stderr
    assert "full node id" in result.stderr
    assert not out.exists()


def test_devices_add_takes_the_agents_tag_spelling(h: Harness) -> None:
    node = str(Identity.generate().node_id)
    result = h.run("devices", "add", node, "--name", "new", "--tag", "tag:kiosk", "--tag", "b")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith(" tags b,kiosk\n")  # stored and shown as `kiosk`
    (add,) = _changes(h)
    assert isinstance(add, DeviceAdd)
    assert add.tags == ("b", "kiosk")


def test_devices_add_refuses_a_bad_tag_as_the_agent_does(h: Harness) -> None:
    node = str(Identity.generate().node_id)
    result = h.run("devices", "add", node, "--name", "new", "--tag", "tag:a b")
    assert result.exit_code == 2
    with pytest.raises(InvalidLabel) as refusal:
        normalize_tags(["tag:a b"])
    assert str(refusal.value) in result.stderr  # word for word the agent's own refusal
    assert h.standin.received == []


def test_devices_add_with_a_bad_node_id_is_a_usage_error(h: Harness) -> None:
    result = h.run("devices", "add", "not-a-node", "--name", "x")
    assert result.exit_code == 2
    assert "not-a-node" in result.stderr
    assert h.standin.received == []


# ---------------------------------------------------------------- push


def test_push_json_prints_sequence_and_devices_and_signs_the_announcement(h: Harness) -> None:
    h.standin.next_sequence = 12
    result = h.run(
        "push", STORE, "--to", "tag:kiosk", "--to", "router", "--action", "boot",
        "--substituter", "http://cache", "--valid-for", "2h", "--json", "--no-cache-check",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    ids = [h.id_of("kiosk-1"), h.id_of("kiosk-2"), h.id_of("router")]
    assert doc == {"sequence": 12, "devices": ids, "cache_check": {"result": "skipped"}}
    push = h.standin.received[-1]
    assert isinstance(push, PushRequest)
    signer, announcement = verify_envelope(push.announcement, Tag.ANNOUNCEMENT, Announcement)
    assert signer == h.admin.node_id
    assert announcement.sequence == 12
    # tag:kiosk is signed as a selector, router as the one explicit id under the root
    assert [str(d) for d in push.devices] == [h.id_of("router")]
    assert announcement.devices_root == target_tree(push.devices).root
    assert announcement.selector == ("kiosk",)
    assert push.targets == ("tag:kiosk", "router")
    assert announcement.action is Action.BOOT
    assert announcement.valid_until - announcement.issued_at == 7200
    assert announcement.substituters == ("http://cache",)


def test_push_text_names_the_sequence_and_devices(h: Harness) -> None:
    result = h.run("push", STORE, "--to", "kiosk-2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"pushed sequence 1: {STORE} (switch) to 1 device: kiosk-2\n"


def test_push_to_an_unknown_target_names_it_and_sends_nothing(h: Harness) -> None:
    result = h.run("push", STORE, "--to", "kiosk-1", "--to", "kiosk-9")
    assert result.exit_code == 1
    assert "target 'kiosk-9': no device with that name" in result.stderr
    assert result.stdout == ""
    assert h.standin.pushes == []


def test_push_to_an_empty_tag_is_an_error(h: Harness) -> None:
    result = h.run("push", STORE, "--to", "tag:printers")
    assert result.exit_code == 1
    assert "no approved device has tag 'printers'" in result.stderr


def test_push_refusal_shows_the_coordinators_code_and_message(h: Harness) -> None:
    h.standin.refuse = ErrorReply(code="unauthorized", message="not an admin of this fleet")
    result = h.run("push", STORE, "--to", "router", "--no-cache-check")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: coordinator refused (unauthorized): not an admin of this fleet"
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["push", "/tmp/x", "--to", "router"], "not a store path"),
        (["push", STORE, "--to", "router", "--valid-for", "soon"], "not a duration"),
        (["push", STORE, "--to", "router", "--action", "reboot"], "reboot"),
        (["push", STORE], "Missing option '--to'"),
        (["push", "--to", "router"], "Missing argument 'STORE_PATH'"),
        (["push", "--status", "1", STORE], "--status SEQ takes no STORE_PATH"),
        (["push", "--status", "0"], "0 is not in the range"),
    ],
)
def test_push_usage_errors(h: Harness, args: list[str], match: str) -> None:
    result = h.run(*args)
    assert result.exit_code == 2
    assert match in result.stderr
    assert h.standin.received == []


def test_push_wait_exits_zero_when_every_device_applied(h: Harness) -> None:
    k1, k2 = (h.devices[i].node_id for i in range(2))
    h.standin.after_push = [
        device_status(k1, "kiosk-1", state=AgentState.DOWNLOADING, sequence=1),
        device_status(k1, "kiosk-1", state=AgentState.APPLIED, sequence=1),
        device_status(k2, "kiosk-2", state=AgentState.APPLIED, sequence=1),
    ]
    result = h.run("push", STORE, "--to", "tag:kiosk", "--wait", "--timeout", "5")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:] == ["kiosk-1: applied", "kiosk-2: applied", "all 2 devices applied sequence 1"]


def test_push_wait_names_the_devices_that_failed(h: Harness) -> None:
    k1, k2 = (h.devices[i].node_id for i in range(2))
    h.standin.after_push = [
        device_status(k1, "kiosk-1", state=AgentState.APPLIED, sequence=1),
        device_status(
            k2, "kiosk-2", state=AgentState.ROLLED_BACK, sequence=1, error="activation exited 3"
        ),
    ]
    result = h.run("push", STORE, "--to", "tag:kiosk", "--wait", "--json")
    assert result.exit_code == fleetctl.EXIT_NOT_APPLIED
    assert "1 of 2 devices did not apply sequence 1" in result.stderr
    assert "kiosk-2: rolled-back: activation exited 3" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert [(r["name"], r["outcome"], r["error"]) for r in doc["results"]] == [
        ("kiosk-1", "applied", None),
        ("kiosk-2", "rolled-back", "activation exited 3"),
    ]


def test_a_large_push_wait_prints_counts_and_failures_not_a_line_per_device(
    h: Harness,
) -> None:
    fleet = [_device_with_id(f"k{i:02}", bytes([i + 1]) * 32) for i in range(40)]
    h.standin.devices = [
        DeviceInfo(node_id=d.node_id, name=d.name, tags=("big",), approved=True,
                   first_seen=None, last_seen=None)
        for d in fleet
    ]  # fmt: skip
    h.standin.after_push = [
        device_status(d.node_id, d.name, state=AgentState.FAILED, sequence=1, error="exit 4")
        if i < 25
        else device_status(d.node_id, d.name, state=AgentState.APPLIED, sequence=1)
        for i, d in enumerate(fleet)
    ]
    result = h.run("push", STORE, "--to", "tag:big", "--wait", "--timeout", "5")
    assert result.exit_code == fleetctl.EXIT_NOT_APPLIED
    out = result.stdout.splitlines()
    assert out[0].startswith(f"pushed sequence 1: {STORE} (switch) to 40 devices: k00, k01,")
    assert out[0].endswith(", k19, ...")
    assert out[1:26] == [f"k{i:02}: failed: exit 4" for i in range(25)]
    assert out[26:] == ["15 applied, 25 failed, 0 rejected, 0 pending (40 devices; pending: none)"]
    err = result.stderr.splitlines()
    err = err[err.index("Error: 25 of 40 devices did not apply sequence 1:") :]
    assert err[1:21] == [f"  k{i:02}: failed: exit 4" for i in range(20)]
    assert err[21:] == ["  ... and 5 more (`fleetctl status --json` has them all)"]


def test_push_wait_times_out_naming_the_offline_device(h: Harness) -> None:
    router = h.devices[2].node_id
    h.standin.publish(device_status(router, "router", online=False))
    result = h.run("push", STORE, "--to", "router", "--wait", "--timeout", "0.3")
    assert result.exit_code == fleetctl.EXIT_NOT_APPLIED
    assert "router: timed-out: offline; it gets the push when it connects" in result.stderr


# ---------------------------------------------------------------- status


def test_status_json_is_a_list_of_device_objects(h: Harness) -> None:
    k1 = h.devices[0].node_id
    h.standin.publish(
        device_status(k1, "kiosk-1", state=AgentState.APPLIED, sequence=3, current=STORE,
                      generation=4, desired=desired(STORE, 3))
    )  # fmt: skip
    result = h.run("status", "--json")
    assert result.exit_code == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["name"] == "kiosk-1"
    assert row["id"] == str(k1)
    assert row["current"] == {"store_path": STORE, "generation": 4}
    assert row["desired"] == {"store_path": STORE, "sequence": 3, "action": "switch"}
    assert {"online", "path", "last_seen", "state", "state_since", "error", "tags"} <= set(row)


def test_status_text_is_a_table(h: Harness) -> None:
    h.standin.publish(device_status(h.devices[0].node_id, "kiosk-1", state=AgentState.APPLIED))
    lines = h.run("status").stdout.splitlines()
    assert lines[0] == "1 device: 1 online, 0 offline; 1 applied"
    assert lines[1].startswith("NAME")
    assert lines[2].startswith("kiosk-1")
    assert "applied" in lines[2]


def _fleet_of(h: Harness, n: int) -> list[NodeId]:
    """`n` devices: every third failed and offline, the rest applied; even ones tagged kiosk."""
    nodes = [Identity.generate().node_id for _ in range(n)]
    for i, node in enumerate(nodes):
        failed = i % 3 == 0
        h.standin.publish(
            device_status(
                node,
                f"d{i:03}",
                tags=("kiosk",) if i % 2 == 0 else (),
                online=not failed,
                state=AgentState.FAILED if failed else AgentState.APPLIED,
                error="switch-to-configuration exited 1" if failed else None,
            )
        )
    return nodes


def test_status_filters_are_sent_to_the_coordinator_and_pages_all_read(h: Harness) -> None:
    nodes = _fleet_of(h, 30)
    h.standin.page_size = 4  # the coordinator sends 4 rows at a time
    result = h.run("status", "--json", "--state", "failed", "--tag", "tag:kiosk", "--offline")
    assert result.exit_code == 0, result.stderr
    expected = sorted(f"d{i:03}" for i in range(30) if i % 6 == 0)
    assert [row["name"] for row in json.loads(result.stdout)] == expected
    queries = h.standin.status_queries
    assert len(queries) == 2  # 5 rows in pages of 4
    assert queries[0].states == (AgentState.FAILED,)
    assert queries[0].offline
    assert queries[0].after is None
    assert queries[1].after in nodes
    everything = h.run("status", "--json")
    assert len(json.loads(everything.stdout)) == 30  # still the list of rows, all of them


def test_status_summary_alone_reads_no_rows(h: Harness) -> None:
    _fleet_of(h, 30)
    text = h.run("status", "--summary")
    assert text.exit_code == 0, text.stderr
    assert text.stdout == "30 devices: 20 online, 10 offline; 20 applied, 10 failed\n"
    doc = json.loads(h.run("status", "--summary", "--json", "--tag", "kiosk").stdout)
    assert doc == {
        "devices": 15,
        "online": 10,
        "offline": 5,
        "pending": 0,
        "states": {"applied": 10, "failed": 5},
    }
    assert all(q.limit == 0 for q in h.standin.status_queries)


def test_push_status_tells_whether_a_sequence_was_accepted(h: Harness) -> None:
    pushed = h.run("push", STORE, "--to", "tag:kiosk", "--no-cache-check")
    assert pushed.exit_code == 0, pushed.stderr
    text = h.run("push", "--status", "1")
    assert text.exit_code == 0, text.stderr
    assert text.stdout.startswith("sequence 1 was accepted ")
    assert f"{STORE} (switch) to 2 devices (tag:kiosk), signed by {h.admin.node_id.short()}" in (
        text.stdout
    )
    doc = json.loads(h.run("push", "--status", "1", "--json").stdout)
    assert doc["accepted"] is True
    assert (doc["sequence"], doc["store_path"], doc["devices"]) == (1, STORE, 2)
    assert doc["targets"] == ["tag:kiosk"]
    missing = h.run("push", "--status", "2")
    assert missing.exit_code == 1
    assert missing.stderr == (
        "Error: no push of sequence 2 was accepted (the highest accepted is 1)\n"
    )
    missing_json = h.run("push", "--status", "2", "--json")
    assert missing_json.exit_code == 1
    assert json.loads(missing_json.stdout) == {"sequence": 2, "accepted": False, "highest": 1}


def test_a_grant_never_answered_is_perhaps_recorded(h: Harness, tmp_path: Path) -> None:
    h.standin.silent = True
    out = tmp_path / "ci.chain"
    subject = str(Identity.generate().node_id)
    result = h.run(
        "--timeout", "0.2", "grant", subject, "--allow", "push", "--scope", "*",
        "--expires", "1h", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == fleetctl.EXIT_NOT_RECORDED
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: the grant was perhaps not recorded in the coordinator's")
    assert "3 sends of the same GrantRecord" in line
    assert "`fleetctl audit` shows whether" in line
    assert out.exists()
    assert len(h.standin.envelopes) == 3
    assert len({bytes(e.signature) for e in h.standin.envelopes}) == 1  # the same request


def test_status_filters_do_not_combine_with_watch(h: Harness) -> None:
    result = h.run("status", "--watch", "--offline")
    assert result.exit_code == 2
    assert "--watch shows every device" in result.stderr


# ---------------------------------------------------------------- settings and errors


def test_flag_beats_env_beats_config_file(h: Harness, tmp_path: Path) -> None:
    other = Identity.generate().node_id
    config = tmp_path / "xdg" / "fleet" / "fleetctl.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'coordinator = "{other}@127.0.0.1:1"\nkey = "{h.key_path}"\ntimeout = 4\n')
    assert h.run("devices", "list", global_args=False).exit_code == 0
    env_coord = f"{h.standin.identity.node_id}@127.0.0.1:2"
    assert (
        h.run("devices", "list", global_args=False, env={"FLEET_COORDINATOR": env_coord}).exit_code
        == 0
    )
    assert (
        h.run("--timeout", "2", "devices", "list", env={"FLEET_COORDINATOR": env_coord}).exit_code
        == 0
    )
    from_file, from_env, from_flag = h.settings
    assert (from_file.coordinator.node_id, from_file.timeout) == (other, 4)
    assert from_env.coordinator.addrs == (("127.0.0.1", 2),)
    assert from_flag.coordinator.addrs == (("127.0.0.1", 9),)
    assert from_flag.timeout == 2
    # the file's coordinator was someone else: the stand-in refused the misaddressed request
    assert h.standin.received
    assert len(h.standin.envelopes) == 3


def test_missing_coordinator_is_a_clear_error(h: Harness) -> None:
    result = h.run("devices", "list", global_args=False, env={"FLEET_KEY": str(h.key_path)})
    assert result.exit_code == 1
    assert "no coordinator" in result.stderr
    assert "FLEET_COORDINATOR" in result.stderr


def test_bad_key_file_is_a_clear_error(h: Harness, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("hello\n")
    result = h.run("--key", str(bad), "devices", "list")
    assert result.exit_code == 1
    assert str(bad) in result.stderr
    missing = h.run("--key", str(tmp_path / "nope"), "devices", "list")
    assert missing.exit_code == 1
    assert "no such key file" in missing.stderr
    assert h.settings == []  # never tried to connect


def test_unreachable_coordinator_is_reported(h: Harness) -> None:
    h.standin.silent = True
    result = h.run("--timeout", "0.2", "devices", "list")
    assert result.exit_code == 1
    assert "no answer from the coordinator within 0.2 s" in result.stderr


# ---------------------------------------------------------------- every command speaks JSON


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    """Every command a user can run: leaves, and groups that run without a subcommand."""
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        here = (*path, name)
        if isinstance(command, click.Group):
            if command.invoke_without_command:
                found.append((" ".join(here), command))
            found.extend(_commands(command, here))
        else:
            found.append((" ".join(here), command))
    return found


def test_every_command_takes_json() -> None:
    commands = dict(_commands(fleetctl.main))
    assert {"devices add", "grant", "record-grant", "org init", "audit", "audit list"} <= set(
        commands
    )
    missing = [
        name
        for name, command in commands.items()
        if not any("--json" in p.opts for p in command.params if isinstance(p, click.Option))
    ]
    assert missing == []


def test_org_init_json(h: Harness, tmp_path: Path) -> None:
    out = tmp_path / "root.key"
    result = h.run("org", "init", "--out", str(out), "--json", global_args=False)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc == {"id": str(load_identity(out).node_id), "key_file": str(out)}
    assert result.stderr == ""  # --json: no advice for people on stderr either


def test_grant_json_without_recording(h: Harness, tmp_path: Path) -> None:
    out = tmp_path / "lead.chain"
    subject = Identity.generate().node_id
    result = h.run(
        "grant", str(subject), "--allow", "push,read", "--scope", "tag:kiosk", "--expires",
        "2h", "--out", str(out), "--no-record", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    [(cert_id, cert)] = certificates_of(read_chain(out))
    assert doc["certificate"] == format_id(cert_id)
    assert (doc["subject"], doc["issuer"]) == (str(subject), str(h.admin.node_id))
    assert doc["actions"] == ["push", "read"]
    assert doc["scope"] == "tag:kiosk"
    assert doc["not_after"] == iso_utc(cert.not_after)
    assert doc["not_after"].endswith("Z")
    assert (doc["recorded"], doc["record_error"], doc["chain_file"]) == (False, None, str(out))
    assert h.standin.received == []  # --no-record: the coordinator was not asked
