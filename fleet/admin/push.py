"""Pushing a system: number it, sign it, hand it over; retry when another push won the number.

The coordinator hands out sequence numbers but cannot choose them for us: the admin signs the
number into the announcement, and the coordinator stores it only if it is higher than every
stored one. Two admins pushing at once both get n; the loser sees "conflict" and signs n+1.

The announcement (v3) signs the targets in a size that does not grow with the fleet: the
tags and a Merkle root over the explicit ids (fleet.protocol.targeting); the ids themselves
go in the push request. For agents older than Hello v4, a push to at most LEGACY_MAX_DEVICES
devices also carries the same push as an Announcement v2 listing every device.

The number is known before the push is sent, so a push whose answer never comes (the client
sent the same request several times, fleet.admin.client) is reported with it: "the outcome
is unknown; `fleetctl push --status N` tells whether it was accepted".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet.admin.client import AdminClient
from fleet.admin.errors import CoordinatorRefused, OutcomeUnknown, ProtocolViolation
from fleet.admin.targets import PushTargets
from fleet.admin.tracking import PushTracker
from fleet.capability import EMPTY_CHAIN, Chain
from fleet.identity import NodeId
from fleet.protocol.messages import Announcement, AnnouncementV2, PushAccepted, StatusSnapshot
from fleet.protocol.targeting import target_tree
from fleet.vocabulary import Action
from fleet.wire import Tag, sign_envelope

MAX_ATTEMPTS = 4
# Up to this many devices a push also carries an Announcement v2 for old agents (34 kB).
LEGACY_MAX_DEVICES = 1000


@dataclass(frozen=True, slots=True)
class PushPlan:
    store_path: str
    to: PushTargets  # see fleet.admin.targets
    substituters: tuple[str, ...]
    action: Action
    valid_for: float  # seconds

    @property
    def devices(self) -> tuple[NodeId, ...]:
        return self.to.devices


def make_announcement(
    plan: PushPlan, sequence: int, now: float, chain: Chain = EMPTY_CHAIN
) -> Announcement:
    tree = target_tree(plan.to.explicit)
    return Announcement(
        sequence=sequence,
        selector=plan.to.selector,
        devices_root=tree.root,
        devices_count=tree.count,
        store_path=plan.store_path,
        substituters=plan.substituters,
        action=plan.action,
        issued_at=now,
        valid_until=now + plan.valid_for,
        chain=chain,
    )


def make_legacy_announcement(ann: Announcement, plan: PushPlan) -> AnnouncementV2 | None:
    """The same push for agents before Hello v4, or None above LEGACY_MAX_DEVICES."""
    if len(plan.devices) > LEGACY_MAX_DEVICES:
        return None
    return AnnouncementV2(
        sequence=ann.sequence,
        devices=plan.devices,
        targets=plan.to.typed,
        store_path=ann.store_path,
        substituters=ann.substituters,
        action=ann.action,
        issued_at=ann.issued_at,
        valid_until=ann.valid_until,
        chain=ann.chain,
    )


async def push(
    client: AdminClient,
    plan: PushPlan,
    *,
    attempts: int = MAX_ATTEMPTS,
    clock: Callable[[], float] = time.time,
) -> PushAccepted:
    """Announce `plan`; returns the coordinator's acknowledgement (stored durably by then)."""
    for attempt in range(1, attempts + 1):
        sequence = await client.next_sequence()
        announcement = make_announcement(plan, sequence, clock(), client.chain)
        envelope = sign_envelope(client.identity, Tag.ANNOUNCEMENT, announcement)
        legacy = make_legacy_announcement(announcement, plan)
        try:
            accepted = await client.push(
                envelope,
                devices=plan.to.explicit,
                targets=plan.to.typed,
                legacy=(
                    sign_envelope(client.identity, Tag.ANNOUNCEMENT, legacy)
                    if legacy is not None
                    else None
                ),
            )
        except OutcomeUnknown as exc:
            raise OutcomeUnknown(
                f"{exc}; the outcome of the push of sequence {sequence} is unknown: "
                f"`fleetctl push --status {sequence}` shows whether it was accepted"
            ) from exc
        except CoordinatorRefused as exc:
            if exc.code == "conflict" and attempt < attempts:
                continue
            raise
        if accepted.sequence != sequence:
            raise ProtocolViolation(
                f"the coordinator acknowledged sequence {accepted.sequence}, we signed {sequence}"
            )
        return accepted
    raise AssertionError("unreachable: the last attempt returns or raises")


async def wait_for_devices(
    client: AdminClient,
    tracker: PushTracker,
    *,
    timeout: float,
    emit: Callable[[str], None],
    changed: Callable[[], None] | None = None,
) -> None:
    """Follow the status stream until every device is done or `timeout` passes (then expire).

    `emit` gets each line worth printing; `changed` (for a live view) is called after every
    message from the coordinator, and once more at the end.
    """
    try:
        async with asyncio.timeout(timeout):
            async with contextlib.aclosing(client.watch()) as stream:
                async for message in stream:
                    statuses = (
                        message.devices
                        if isinstance(message, StatusSnapshot)
                        else (message.device,)
                    )
                    for status in statuses:
                        for line in tracker.observe(status):
                            emit(line)
                    if tracker.finished:
                        return
                    if changed is not None:
                        changed()
    except TimeoutError:
        tracker.expire()
    finally:
        if changed is not None:
            changed()
