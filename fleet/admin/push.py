"""Pushing a system: number it, sign it, hand it over; retry when another push won the number.

The coordinator hands out sequence numbers but cannot choose them for us: the admin signs the
number into the announcement, and the coordinator stores it only if it is higher than every
stored one. Two admins pushing at once both get n; the loser sees "conflict" and signs n+1.

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
from fleet.admin.tracking import PushTracker
from fleet.capability import EMPTY_CHAIN, Chain
from fleet.identity import NodeId
from fleet.protocol.messages import Announcement, PushAccepted, StatusSnapshot
from fleet.vocabulary import Action
from fleet.wire import Tag, sign_envelope

MAX_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class PushPlan:
    store_path: str
    devices: tuple[NodeId, ...]  # resolved, see fleet.admin.targets
    targets: tuple[str, ...]  # as typed, for display
    substituters: tuple[str, ...]
    action: Action
    valid_for: float  # seconds


def make_announcement(
    plan: PushPlan, sequence: int, now: float, chain: Chain = EMPTY_CHAIN
) -> Announcement:
    return Announcement(
        sequence=sequence,
        devices=plan.devices,
        targets=plan.targets,
        store_path=plan.store_path,
        substituters=plan.substituters,
        action=plan.action,
        issued_at=now,
        valid_until=now + plan.valid_for,
        chain=chain,
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
        try:
            accepted = await client.push(envelope)
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
