"""Audit witnesses: a log must extend every checkpoint kept outside the coordinator.

The consistency check itself (fleet.audit.consistency), fleetctl's remembered checkpoint
(fleet.admin.witness, fleet.admin.auditing.check_witnessed), the agent's (fleet.agent.witness)
and the coordinator keeping what agents report (fleet.coordinator.witnesses).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from fleet.admin.auditing import check_witnessed
from fleet.admin.settings import resolve_state_dir
from fleet.admin.witness import CheckpointMemory, WitnessFileError
from fleet.agent.agent import Agent
from fleet.agent.backoff import Backoff
from fleet.agent.session import CoordinatorSession, SessionConfig
from fleet.agent.state import StateFile
from fleet.agent.updater import ApplyConfig
from fleet.agent.witness import CHECKPOINT_FILE, CheckpointWitness
from fleet.audit import (
    AuditEntry,
    AuditExport,
    AuditVerifyError,
    Witnessed,
    check_extends,
    check_prefix,
    check_witnesses,
    newest,
    sign_checkpoint,
    verify_log,
)
from fleet.coordinator.database import Database
from fleet.coordinator.service import CoordinatorService
from fleet.identity import Identity
from fleet.nix import NixStore
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import (
    AuditCheckpoint,
    AuditWitnesses,
    AuditWitnessesReply,
    DeviceAdd,
    ErrorReply,
    Hello,
    StatusReport,
    Welcome,
    Witness,
    WitnessReport,
)
from fleet.wire import Message, SignedEnvelope, encode
from tests.unit.agent.test_session import ADMIN, DEVICE, PATH, FakeDialer, running_system
from tests.unit.audit.test_verifier import COORD, NOW, build_log, checkpoint, rehash
from tests.unit.coordinator.test_service import Clock, FakeLink, hello


def forge(entries: list[AuditEntry], at: int) -> list[AuditEntry]:
    """Entry `at` edited and every hash from it on recomputed: internally consistent."""
    edited = dataclasses.replace(entries[at - 1], detail='{"forged":true}')
    return rehash([*entries[: at - 1], edited, *entries[at:]], at)


def seen(envelope: SignedEnvelope, source: str = "the witness") -> Witnessed:
    return Witnessed(source, envelope)


# ---------------------------------------------------------------- the consistency check


def test_a_log_that_grew_extends_an_earlier_checkpoint() -> None:
    entries = build_log(6)
    kept = checkpoint(entries, 4)
    assert check_extends(entries, seen(kept), COORD.node_id).sequence == 4
    assert check_extends(entries[:4], seen(kept), COORD.node_id).sequence == 4


def test_a_rewritten_entry_is_named_with_both_hashes() -> None:
    entries = build_log(6)
    kept = checkpoint(entries, 4)
    forged = forge(entries, 2)  # entry 2 re-made, every later hash recomputed
    with pytest.raises(AuditVerifyError) as caught:
        check_extends(forged, seen(kept, "device X"), COORD.node_id)
    assert caught.value.entry == 4
    assert forged[3].hash.hex()[:16] in str(caught.value)
    assert entries[3].hash.hex()[:16] in str(caught.value)
    assert "device X" in str(caught.value)


def test_a_truncated_log_is_caught() -> None:
    entries = build_log(6)
    with pytest.raises(AuditVerifyError) as caught:
        check_extends(entries[:4], seen(checkpoint(entries, 6)), COORD.node_id)
    assert caught.value.entry == 5
    assert "entries deleted" in str(caught.value)


def test_deleted_checkpoints_and_a_fresh_one_over_the_forged_head() -> None:
    """The issue's attack: on its own the forged log verifies; the kept checkpoint does not."""
    entries = build_log(6)
    kept = checkpoint(entries, 6)
    forged = forge(entries, 3)
    fresh = checkpoint(forged, 6)  # the coordinator signs whatever head its database holds
    assert verify_log(forged, [fresh], COORD.node_id).sealed == 6
    with pytest.raises(AuditVerifyError, match="entry 6: rewritten"):
        check_witnesses(forged, [seen(fresh), seen(kept)], COORD.node_id)


def test_a_forked_checkpoint_does_not_match_the_log() -> None:
    entries = build_log(4)
    forked = sign_checkpoint(COORD, 4, bytes(32), NOW)  # same index, another head
    with pytest.raises(AuditVerifyError, match="entry 4: rewritten"):
        check_extends(entries, seen(forked), COORD.node_id)


def test_a_checkpoint_not_signed_by_the_coordinator_is_refused() -> None:
    entries = build_log(4)
    other = sign_checkpoint(Identity.generate(), 4, entries[3].hash, NOW)
    with pytest.raises(AuditVerifyError, match="not by the coordinator"):
        check_extends(entries, seen(other), COORD.node_id)


def test_an_export_must_be_a_prefix_hash_for_hash() -> None:
    entries = build_log(6)
    check_prefix(entries, entries[:4], "the export")
    check_prefix(entries, entries, "the export")
    with pytest.raises(AuditVerifyError, match=r"entry 2: rewritten.*in the export"):
        check_prefix(forge(entries, 2), entries[:4], "the export")
    with pytest.raises(AuditVerifyError, match="entry 5: missing"):
        check_prefix(entries[:4], entries, "the export")


def test_newest_is_the_highest_valid_index() -> None:
    entries = build_log(6)
    bogus = sign_checkpoint(Identity.generate(), 6, entries[5].hash, NOW)
    best = newest([checkpoint(entries, 2), checkpoint(entries, 5), bogus], COORD.node_id)
    assert best is not None
    assert best.payload == checkpoint(entries, 5).payload
    assert newest([bogus], COORD.node_id) is None


# ---------------------------------------------------------------- fleetctl's side


def test_check_witnessed_names_the_device_and_the_export() -> None:
    entries = build_log(6)
    forged = forge(entries, 2)
    witness = Witness(
        checkpoint=checkpoint(entries, 5), device=Identity.generate().node_id, devices=3,
        reported_at=NOW,
    )  # fmt: skip
    with pytest.raises(AuditVerifyError) as caught:
        check_witnessed(forged, COORD.node_id, reported=[witness])
    assert f"device {witness.device} and 2 other device(s)" in str(caught.value)
    export = AuditExport(COORD.node_id, entries[:3], [checkpoint(entries, 3)])
    with pytest.raises(AuditVerifyError, match=r"entry 2: rewritten.*the export old\.jsonl"):
        check_witnessed(forged, COORD.node_id, against=("old.jsonl", export))
    other = AuditExport(Identity.generate().node_id, entries[:3], [])
    with pytest.raises(AuditVerifyError, match="is of coordinator"):
        check_witnessed(entries, COORD.node_id, against=("x", other))
    ok = check_witnessed(
        entries, COORD.node_id, remembered=checkpoint(entries, 4), reported=[witness],
        against=("old.jsonl", export),
    )  # fmt: skip
    assert (ok.remembered, ok.reported, ok.devices) == (4, 1, 3)
    assert "remembered here (entry 4)" in ok.summary()


def test_the_remembered_checkpoint_round_trips_privately(tmp_path: Path) -> None:
    entries = build_log(4)
    memory = CheckpointMemory(tmp_path / "state", COORD.node_id)
    assert memory.load() is None
    memory.save(checkpoint(entries, 4))
    assert memory.load() == checkpoint(entries, 4)
    assert memory.path.stat().st_mode & 0o777 == 0o600
    assert json.loads(memory.path.read_text())["sequence"] == 4
    memory.path.write_text("{broken")
    with pytest.raises(WitnessFileError, match="move it away"):
        memory.load()
    other = CheckpointMemory(tmp_path / "state", Identity.generate().node_id)
    other.path.parent.mkdir(parents=True, exist_ok=True)
    other.path.write_text(memory.path.read_text().replace("{broken", ""))
    with pytest.raises(WitnessFileError):
        other.load()


def test_state_dir_flag_env_file_then_xdg(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = tmp_path / "fleetctl.toml"
    config.write_text('state-dir = "/from/file"\n')
    env = {"XDG_STATE_HOME": "/xdg"}
    assert resolve_state_dir(state_dir=None, config_file=None, env={}, home=home) == (
        home / ".local" / "state" / "fleet"
    )
    assert resolve_state_dir(state_dir=None, config_file=None, env=env, home=home) == Path(
        "/xdg/fleet"
    )
    assert resolve_state_dir(state_dir=None, config_file=str(config), env=env, home=home) == Path(
        "/from/file"
    )
    assert resolve_state_dir(
        state_dir=None, config_file=str(config), env={**env, "FLEET_STATE_DIR": "/env"}, home=home
    ) == Path("/env")
    assert resolve_state_dir(
        state_dir="/flag", config_file=str(config), env={"FLEET_STATE_DIR": "/env"}, home=home
    ) == Path("/flag")


# ---------------------------------------------------------------- the agent's side


def reported(reports: list[WitnessReport]) -> list[SignedEnvelope]:
    return [r.checkpoint for r in reports]


def test_the_agent_keeps_the_newest_and_reports_what_it_held(tmp_path: Path) -> None:
    entries = build_log(6)
    witness = CheckpointWitness(tmp_path, COORD.node_id)
    first, second = checkpoint(entries, 3), checkpoint(entries, 5)
    assert reported(witness.receive(first)) == [first]
    assert reported(witness.receive(second)) == [first, second]
    assert witness.held == second
    assert reported(witness.receive(second)) == [second]  # same one again: reported, kept
    again = CheckpointWitness(tmp_path, COORD.node_id)
    again.load()
    assert again.held == second  # survives a restart


def test_the_agent_keeps_the_evidence_of_a_fork(tmp_path: Path) -> None:
    entries = build_log(6)
    witness = CheckpointWitness(tmp_path, COORD.node_id)
    honest = checkpoint(entries, 5)
    witness.receive(honest)
    forked = checkpoint(forge(entries, 2), 5)  # same index, another head
    assert reported(witness.receive(forked)) == [honest]
    older = checkpoint(entries, 2)  # going back: a truncated log
    assert reported(witness.receive(older)) == [honest]
    assert witness.held == honest


def test_the_agent_ignores_checkpoints_of_anyone_else(tmp_path: Path) -> None:
    entries = build_log(4)
    witness = CheckpointWitness(tmp_path, COORD.node_id)
    assert witness.receive(sign_checkpoint(Identity.generate(), 4, entries[3].hash, NOW)) == []
    assert witness.held is None
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"garbage")
    witness.load()
    assert witness.held is None
    assert CheckpointWitness(tmp_path, None).receive(checkpoint(entries, 4)) == []


# ---------------------------------------------------------------- the coordinator's side


class Witnesses:
    """A coordinator service that signs checkpoints, with one approved device connected."""

    def __init__(self, db: Database) -> None:
        self.coordinator = Identity.generate()
        self.admin = Identity.generate()
        self.clock = Clock()
        self.service = CoordinatorService(
            db, self.coordinator.node_id, [self.admin.node_id], signer=self.coordinator,
            clock=self.clock,
        )  # fmt: skip

    async def request(self, body: Message, signer: Identity | None = None) -> Message:
        signer = signer or self.admin
        self.clock.now += 1
        env = make_admin_request(signer, self.coordinator.node_id, body, now=self.clock.now)
        return (await self.service.handle_admin(encode(env), signer.node_id)).reply

    async def listed(self) -> tuple[Witness, ...]:
        reply = await self.request(AuditWitnesses())
        assert isinstance(reply, AuditWitnessesReply)
        return reply.witnesses


async def test_the_coordinator_hands_out_checkpoints_and_keeps_reports(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "c.db")
    w = Witnesses(db)
    device = Identity.generate().node_id
    await w.request(DeviceAdd(node_id=device, name="kiosk", tags=()))
    await w.service.checkpoint()
    link = FakeLink(device)
    session = await w.service.agent_hello(link, hello())
    assert session is not None
    sent = [m for m in link.sent if isinstance(m, AuditCheckpoint)]
    assert len(sent) == 1  # after Welcome: the newest checkpoint
    await w.request(DeviceAdd(node_id=Identity.generate().node_id, name="b", tags=()))
    assert await w.service.checkpoint() == 2
    newer = [m for m in link.sent if isinstance(m, AuditCheckpoint)][-1].checkpoint
    assert newer != sent[0].checkpoint  # each new checkpoint goes to live agents

    await w.service.agent_message(session, WitnessReport(checkpoint=sent[0].checkpoint))
    await w.service.agent_message(session, WitnessReport(checkpoint=newer))
    listed = await w.listed()
    assert [x.checkpoint for x in listed] == [newer]  # an older one that matches is redundant
    assert listed[0].device == device

    forged = sign_checkpoint(w.coordinator, 1, bytes(32), NOW)  # a fork, as a witness holds it
    await w.service.agent_message(session, WitnessReport(checkpoint=forged))
    stranger = sign_checkpoint(Identity.generate(), 1, bytes(32), NOW)
    await w.service.agent_message(session, WitnessReport(checkpoint=stranger))
    listed = await w.listed()
    assert [x.checkpoint for x in listed] == [forged, newer]  # conflicts first; no stranger's

    outsider = Identity.generate()
    refused = await w.request(AuditWitnesses(), signer=outsider)
    assert isinstance(refused, ErrorReply)
    assert refused.code == "unauthorized"
    await db.close()


async def test_a_witness_in_hello_is_kept_and_conflicts_are_bounded(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "c.db")
    w = Witnesses(db)
    device = Identity.generate().node_id
    await w.request(DeviceAdd(node_id=device, name="kiosk", tags=()))
    forks = [sign_checkpoint(w.coordinator, 1, bytes([n]) * 32, NOW + n) for n in range(20)]
    session = await w.service.agent_hello(
        FakeLink(device), dataclasses.replace(hello(), checkpoint=forks[0])
    )
    assert session is not None
    assert [x.checkpoint for x in await w.listed()] == [forks[0]]

    async def report_all() -> int:
        for n, fork in enumerate(forks[1:], start=1):
            w.clock.now = NOW + n
            await w.service.agent_message(session, WitnessReport(checkpoint=fork))
        row = await db.fetchone("SELECT count(*) AS n FROM audit_witnesses")
        assert row is not None
        return int(row["n"])

    # No checkpoint was sent to it: only two unsolicited reports are worth a disk write.
    assert await report_all() == 3
    session.witness_budget = 100
    assert await report_all() == 16  # MAX_CONFLICTS per device: what one device makes us keep
    await db.close()


async def test_the_agent_reports_its_checkpoint_in_hello_and_when_one_arrives(
    tmp_path: Path,
) -> None:
    """Over the agent's real session code: checkpoint down, WitnessReport up, Hello v3 after a
    reconnect (and after a restart of the agent) carrying what it holds."""
    entries = build_log(5)
    store = NixStore.chroot(tmp_path / "store")
    config = ApplyConfig(
        store=store,
        profile=running_system(tmp_path / "store", PATH),
        substituters=("http://127.0.0.1:9",),
        trusted_public_keys=("k-1:" + "A" * 43 + "=",),
    )

    def start_agent() -> Agent:
        return Agent(
            DEVICE.node_id, [ADMIN.node_id], config, StateFile(tmp_path / "state"),
            coordinator=COORD.node_id,
        )  # fmt: skip

    agent = start_agent()
    dialer = FakeDialer()
    session = CoordinatorSession(
        agent, dialer, SessionConfig(backoff=Backoff(initial=0.01, maximum=0.05))
    )
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(agent.run()), tg.create_task(session.run())]
        channel = await dialer.next()
        assert (await channel.recv(Hello)).checkpoint is None
        await channel.send(Welcome(approved=True, name="dev-1"))
        await channel.recv(StatusReport)
        await channel.send(AuditCheckpoint(checkpoint=checkpoint(entries, 5)))
        assert (await channel.recv(WitnessReport)).checkpoint == checkpoint(entries, 5)
        channel.hang_up()
        again = await dialer.next()
        assert (await again.recv(Hello)).checkpoint == checkpoint(entries, 5)
        for task in tasks:
            task.cancel()
    assert start_agent().hello().checkpoint == checkpoint(entries, 5)  # after a restart too
