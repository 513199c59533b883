"""Offline audit verification: an export and the coordinator's id are enough to find any edit."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from fleet.audit import (
    GENESIS,
    AuditEntry,
    AuditVerifyError,
    ExportError,
    Outcome,
    entry_hash,
    export_lines,
    make_entry,
    read_export,
    sign_checkpoint,
    verify_log,
)
from fleet.identity import Identity
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import AuditPage, DeviceList, NextSequence
from fleet.wire import SignedEnvelope, decode, encode

NOW = 1_800_000_000.0
COORD = Identity.generate()
ADMIN = Identity.generate()


def build_log(count: int = 6) -> list[AuditEntry]:
    """Accepted entries signed by ADMIN, with a refused garbage request as entry 3."""
    entries: list[AuditEntry] = []
    prev = GENESIS
    for n in range(1, count + 1):
        if n == 3:
            request, outcome, actor = b"not a request", Outcome.REFUSED, str(ADMIN.node_id)
        else:
            request = encode(make_admin_request(ADMIN, COORD.node_id, DeviceList(), now=NOW + n))
            outcome, actor = Outcome.ACCEPTED, str(ADMIN.node_id)
        entry = make_entry(
            id=n,
            time=NOW + n,
            actor=actor,
            action="device-list" if outcome == Outcome.ACCEPTED else "unknown",
            outcome=outcome,
            detail={"n": n},
            request=request,
            prev_hash=prev,
        )
        entries.append(entry)
        prev = entry.hash
    return entries


def checkpoint(entries: list[AuditEntry], upto: int) -> SignedEnvelope:
    return sign_checkpoint(COORD, upto, entries[upto - 1].hash, NOW + upto)


def rehash(entries: list[AuditEntry], start: int) -> list[AuditEntry]:
    """What someone who edits the file and recomputes the hashes from `start` on would get."""
    out = entries[: start - 1]
    prev = out[-1].hash if out else GENESIS
    for entry in entries[start - 1 :]:
        fixed = make_entry(
            id=entry.id,
            time=entry.time,
            actor=entry.actor,
            action=entry.action,
            outcome=entry.outcome,
            detail=entry.details(),
            request=entry.request,
            prev_hash=prev,
        )
        out.append(fixed)
        prev = fixed.hash
    return out


def test_an_intact_log_verifies_offline_from_its_export() -> None:
    entries = build_log()
    lines = list(export_lines(COORD.node_id, entries, [checkpoint(entries, 4)]))
    exported = read_export(io.StringIO("".join(lines)))
    assert exported.coordinator == COORD.node_id
    assert exported.entries == entries
    report = verify_log(exported.entries, exported.checkpoints, exported.coordinator)
    assert (report.entries, report.accepted, report.refused) == (6, 5, 1)
    assert report.sealed == 4
    assert "2 after it" in report.summary()


def test_edited_entry_is_named() -> None:
    entries = build_log()
    entries[3] = dataclasses.replace(entries[3], detail='{"n":99}')
    with pytest.raises(AuditVerifyError, match="entry 4: content does not match") as caught:
        verify_log(entries, [], COORD.node_id)
    assert caught.value.entry == 4


def test_deleted_entry_is_named() -> None:
    entries = build_log()
    del entries[2]
    with pytest.raises(AuditVerifyError, match="entry 3: missing") as caught:
        verify_log(entries, [], COORD.node_id)
    assert caught.value.entry == 3


def test_reordered_entries_are_named() -> None:
    entries = build_log()
    entries[1], entries[4] = entries[4], entries[1]
    with pytest.raises(AuditVerifyError) as caught:
        verify_log(entries, [], COORD.node_id)
    assert caught.value.entry == 2


def test_reordered_with_renumbered_ids_breaks_the_links() -> None:
    entries = build_log()
    swapped = [entries[0], entries[2], entries[1], *entries[3:]]
    renumbered = [dataclasses.replace(e, id=i) for i, e in enumerate(swapped, start=1)]
    with pytest.raises(AuditVerifyError, match="entry 2: does not link to entry 1"):
        verify_log(renumbered, [], COORD.node_id)


def test_deleted_tail_is_found_by_a_checkpoint() -> None:
    entries = build_log()
    cp = checkpoint(entries, 6)
    with pytest.raises(AuditVerifyError, match=r"entry 5: missing.*covers 6 entries") as caught:
        verify_log(entries[:4], [cp], COORD.node_id)
    assert caught.value.entry == 5


def test_rewritten_history_with_recomputed_hashes_is_found_by_a_checkpoint() -> None:
    entries = build_log()
    checkpoints = [checkpoint(entries, 2), checkpoint(entries, 5)]
    edited = list(entries)
    edited[3] = dataclasses.replace(edited[3], detail='{"n":"rewritten"}')
    forged = rehash(edited, 4)
    with pytest.raises(AuditVerifyError, match=r"entries 3\.\.5 were rewritten") as caught:
        verify_log(forged, checkpoints, COORD.node_id)
    assert caught.value.entry == 3


def test_accepted_entry_must_be_signed_by_its_actor() -> None:
    entries = build_log()
    other = Identity.generate()
    request = encode(make_admin_request(other, COORD.node_id, NextSequence(), now=NOW))
    entries[1] = dataclasses.replace(entries[1], request=request)
    forged = rehash(entries, 2)
    with pytest.raises(AuditVerifyError, match="entry 2: accepted, but its request is signed by"):
        verify_log(forged, [], COORD.node_id)


def test_accepted_entry_without_a_signed_request_is_refused() -> None:
    entries = build_log()
    entries[4] = dataclasses.replace(entries[4], request=b"\x00garbage")
    forged = rehash(entries, 5)
    with pytest.raises(AuditVerifyError, match="entry 5: accepted, but its request is not"):
        verify_log(forged, [], COORD.node_id)


def test_accepted_entry_for_another_coordinator_is_refused() -> None:
    entries = build_log()
    other = Identity.generate().node_id
    request = encode(make_admin_request(ADMIN, other, DeviceList(), now=NOW))
    entries[0] = dataclasses.replace(entries[0], request=request)
    with pytest.raises(AuditVerifyError, match="entry 1: accepted, but its request is addressed"):
        verify_log(rehash(entries, 1), [], COORD.node_id)


def test_authority_hook_names_the_entry() -> None:
    entries = build_log()

    def authorize(entry: AuditEntry, *_: object) -> str | None:
        return "no push right" if entry.id == 5 else None

    with pytest.raises(AuditVerifyError, match="entry 5: accepted without authority: no push"):
        verify_log(entries, [], COORD.node_id, authorize=authorize)


def test_checkpoint_signed_by_another_key_is_refused() -> None:
    entries = build_log()
    impostor = sign_checkpoint(Identity.generate(), 6, entries[5].hash, NOW)
    with pytest.raises(AuditVerifyError, match="checkpoint 1: checkpoint is signed by"):
        verify_log(entries, [impostor], COORD.node_id)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty export"),
        ('{"type":"entry"}\n', "line 1: expected a fleet-audit/1 header"),
        ("[1,2]\n", "line 1: not a JSON object"),
        ("{not json\n", "line 1"),
    ],
)
def test_unreadable_exports_name_the_line(text: str, problem: str) -> None:
    with pytest.raises(ExportError, match=problem):
        read_export(io.StringIO(text))


def test_export_with_a_broken_entry_line_names_it() -> None:
    entries = build_log(2)
    lines = list(export_lines(COORD.node_id, entries, []))
    obj = json.loads(lines[2])
    obj["request"] = "***"
    lines[2] = json.dumps(obj) + "\n"
    with pytest.raises(ExportError, match="line 3"):
        read_export(lines)


def test_an_entry_hashes_to_what_every_stored_log_holds() -> None:
    # Known answer: logs written by earlier versions must still verify.
    entry = make_entry(
        id=3,
        time=1.5,
        actor="a",
        action="push",
        outcome=Outcome.ACCEPTED,
        detail={"x": 1},
        request=b"r",
        prev_hash=GENESIS,
    )
    assert entry.hash.hex() == "f9200a70cf598e63a6b4d776bd9ae9a119da6b0babfffed13d897dd153527a36"
    assert entry_hash(entry) == entry.hash
    assert entry_hash(dataclasses.replace(entry, detail='{"x":2}')) != entry.hash


def test_the_entry_is_what_travels_in_an_audit_page() -> None:
    (entry,) = build_log(1)
    page = AuditPage(entries=(entry,), checkpoints=(), more=False)
    assert decode(encode(page), AuditPage).entries == (entry,)  # one shape, no conversion
