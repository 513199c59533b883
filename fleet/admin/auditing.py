"""`fleetctl audit`: fetch the coordinator's audit log, show it, verify it, export it.

Verification runs here, on the admin's machine, with trust roots the admin chooses: the
coordinator only supplies the data, so a coordinator that edited its log is caught (see
fleet.audit.verifier and docs/security.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.admin.client import AdminClient
from fleet.admin.duration import parse_duration
from fleet.admin.errors import ProtocolViolation
from fleet.admin.views import iso_utc
from fleet.audit import (
    AuditEntry,
    AuditExport,
    AuditReport,
    AuditVerifyError,
    AuthorityReplay,
    Witnessed,
    check_extends,
    check_prefix,
    check_witnesses,
    entry_json,
    verify_log,
)
from fleet.capability import Chain, certificates_of
from fleet.identity import NodeId
from fleet.protocol.messages import AuditWitnesses, AuditWitnessesReply, Witness
from fleet.wire import SignedEnvelope

MAX_PAGES = 100_000  # a bound on the loop, far above any real log


async def fetch_log(client: AdminClient) -> AuditExport:
    """Every entry and checkpoint, page by page (the same shape as a read export)."""
    entries: list[AuditEntry] = []
    checkpoints: dict[bytes, SignedEnvelope] = {}
    after = 0
    for _ in range(MAX_PAGES):
        page = await client.audit_page(after)
        entries.extend(page.entries)
        for checkpoint in page.checkpoints:
            checkpoints.setdefault(checkpoint.payload, checkpoint)
        if not page.more:
            return AuditExport(client.coordinator, entries, list(checkpoints.values()))
        if not page.entries or page.entries[-1].id <= after:
            raise ProtocolViolation("the coordinator's audit pages do not advance")
        after = page.entries[-1].id
    raise ProtocolViolation("the audit log did not end")


def roots_of(own: NodeId, chain: Chain) -> frozenset[NodeId]:
    """Default trust roots for verifying: the root our own chain starts at, or our own key."""
    if not chain.certificates:
        return frozenset({own})
    return frozenset({certificates_of(chain)[0][1].issuer})


def verify(
    entries: Sequence[AuditEntry],
    checkpoints: Sequence[SignedEnvelope],
    coordinator: NodeId,
    trust_roots: Collection[NodeId],
) -> AuditReport:
    return verify_log(entries, checkpoints, coordinator, authorize=AuthorityReplay(trust_roots))


# ---------------------------------------------------------------- witnesses

REMEMBERED = "the checkpoint this machine remembered from its last audit verify"


async def fetch_witnesses(client: AdminClient) -> list[Witness]:
    """The distinct checkpoints agents reported keeping (fleet.coordinator.witnesses)."""
    reply = await client.call(AuditWitnesses(), AuditWitnessesReply)
    return list(reply.witnesses)


@dataclass(frozen=True)
class WitnessCheck:
    """What else than the coordinator's own checkpoints the log was found consistent with."""

    remembered: int | None  # index of the checkpoint this machine remembered (None: none)
    reported: int  # distinct checkpoints reported by devices
    devices: int  # devices that reported them
    against: str | None  # an export the log was checked against
    against_entries: int

    def summary(self) -> str:
        parts = []
        if self.remembered is not None:
            parts.append(f"the checkpoint remembered here (entry {self.remembered})")
        if self.reported:
            parts.append(f"{self.reported} checkpoint(s) kept by {self.devices} device(s)")
        if self.against is not None:
            parts.append(f"the export {self.against} ({self.against_entries} entries)")
        if not parts:
            return "no earlier checkpoint to compare with (first verify from this machine)"
        return "consistent with " + ", ".join(parts)

    def json(self) -> dict[str, Any]:
        return {
            "remembered": self.remembered,
            "witnesses": self.reported,
            "witness_devices": self.devices,
            "against": self.against,
        }


def _reported_by(witness: Witness) -> str:
    others = f" and {witness.devices - 1} other device(s)" if witness.devices > 1 else ""
    return f"device {witness.device}{others}"


def check_witnessed(
    entries: Sequence[AuditEntry],
    coordinator: NodeId,
    *,
    remembered: SignedEnvelope | None = None,
    reported: Sequence[Witness] = (),
    against: tuple[str, AuditExport] | None = None,
) -> WitnessCheck:
    """The log must extend every checkpoint kept elsewhere (AuditVerifyError otherwise):
    an export (a prefix, hash for hash, and its checkpoints), the one this machine
    remembered, and every one agents reported."""
    if against is not None:
        name, export = against
        source = f"the export {name}"
        if export.coordinator != coordinator:
            raise AuditVerifyError(
                None, f"{source} is of coordinator {export.coordinator}, not of {coordinator}"
            )
        check_prefix(entries, export.entries, source)
        check_witnesses(entries, [Witnessed(source, c) for c in export.checkpoints], coordinator)
    index = None
    if remembered is not None:
        index = check_extends(entries, Witnessed(REMEMBERED, remembered), coordinator).sequence
    check_witnesses(
        entries, [Witnessed(_reported_by(w), w.checkpoint) for w in reported], coordinator
    )
    return WitnessCheck(
        remembered=index,
        reported=len(reported),
        devices=sum(w.devices for w in reported),
        against=against[0] if against is not None else None,
        against_entries=len(against[1].entries) if against is not None else 0,
    )


def parse_since(text: str, now: float) -> float:
    """An ISO 8601 time (UTC unless it says otherwise) or a duration ago (`2h`, `7d`)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time (2026-01-31T12:00Z) nor a duration ago (2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def select(
    entries: Sequence[AuditEntry], since: float | None, actor: str | None
) -> list[AuditEntry]:
    return [
        e
        for e in entries
        if (since is None or e.time >= since) and (actor is None or e.actor.startswith(actor))
    ]


def summary(entry: AuditEntry) -> str:
    detail = entry.details()
    if entry.outcome == "refused":
        kind = str(detail.get("code", "?"))
        if "capability" in detail:
            kind += f"/{detail['capability']}"
        return f"{kind}: {detail.get('reason', '')}"
    if entry.action == "push":
        # `resolved`: every device the push reached (its ids and its selector's devices);
        # entries from before announcement v3 have only `devices`.
        count = detail.get("resolved", len(detail.get("devices", [])))
        selector = "".join(f" tag:{tag}" for tag in detail.get("selector", []))
        return (
            f"sequence {detail.get('sequence')} {detail.get('store_path')} to "
            f"{count} device(s){selector and ' by' + selector}"
        )
    if entry.action == "grant":
        return (
            f"{','.join(detail.get('actions', []))} on {detail.get('scope')} to "
            f"{str(detail.get('subject', ''))[:10]} ({str(detail.get('certificate', ''))[:16]})"
        )
    if entry.action == "revoke":
        return f"certificate {str(detail.get('certificate', ''))[:16]}: {detail.get('reason', '')}"
    name = detail.get("name")
    return f"{name} ({str(detail.get('node_id', ''))[:10]})" if name else entry.detail[:60]


def table(entries: Sequence[AuditEntry]) -> str:
    rows = [("ID", "TIME", "ACTOR", "ACTION", "OUTCOME", "DETAIL")]
    for e in entries:
        rows.append(
            (
                str(e.id),
                iso_utc(e.time) or "",
                e.actor[:10],
                e.action,
                e.outcome,
                summary(e)[:90],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:5])) + "  " + r[5] for r in rows
    )


DETAIL_TIMES = ("not_before", "not_after", "issued_at", "valid_until")  # unix seconds in details


def as_json(entry: AuditEntry) -> dict[str, Any]:
    """One entry of `fleetctl audit --json`: times as ISO 8601 strings, detail as an object.

    (The export, `fleetctl audit export`, keeps the stored form: it is what gets verified.)
    """
    document = entry_json(entry)
    document.pop("type")
    document["time"] = iso_utc(entry.time)
    with contextlib.suppress(ValueError):
        detail = json.loads(entry.detail)
        if isinstance(detail, dict):
            for key in DETAIL_TIMES:
                if isinstance(detail.get(key), int | float):
                    detail[key] = iso_utc(float(detail[key]))
        document["detail"] = detail
    return document


def report_json(report: AuditReport) -> dict[str, int]:
    """The counts of a verified log, for `fleetctl audit verify --json`."""
    return {
        "entries": report.entries,
        "accepted": report.accepted,
        "refused": report.refused,
        "checkpoints": report.checkpoints,
        "sealed": report.sealed,
    }
