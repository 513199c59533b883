"""A coordinator whose answers to pushes get lost: for the tests of what fleetctl does then.

With FLEET_TEST_LOSE_PUSH_ANSWERS=N in its environment the coordinator carries out pushes as
always (committed, audited, delivered) but never sends the first N PushAccepted answers,
repeats included, as if they were lost on a slow network (tests/integration/
test_idempotent_push.py). Nothing else changes; production never sets it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from fleet.coordinator.service import AdminResult, CoordinatorService
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol.messages import PushAccepted

log = get_logger(__name__)

LOSE_PUSH_ANSWERS = "FLEET_TEST_LOSE_PUSH_ANSWERS"


class LossyService(CoordinatorService):
    lost_answers = 0  # PushAccepted answers still to lose

    async def handle_admin(self, raw: bytes, connection_id: NodeId) -> AdminResult:
        result = await super().handle_admin(raw, connection_id)
        if self.lost_answers <= 0 or not isinstance(result.reply, PushAccepted):
            return result
        self.lost_answers -= 1
        log.warning("push_answer_lost_for_tests", sequence=result.reply.sequence)
        if result.delivery is not None:
            await self.deliver(result.delivery)
        await asyncio.Event().wait()  # never answered; the stream ends with the connection
        raise AssertionError("unreachable")


def lost_push_answers(env: Mapping[str, str]) -> int:
    """How many push answers to lose (0: a coordinator as always)."""
    try:
        return max(0, int(env.get(LOSE_PUSH_ANSWERS, "0")))
    except ValueError:
        return 0
