"""The admin table: one row per request type, with the permissions the offline audit
verifier replays with (fleet.protocol.permissions), so the two cannot drift apart."""

from __future__ import annotations

import pytest

from fleet.audit import AuthorityReplay, Outcome, make_entry, signed_request
from fleet.audit.record import GENESIS
from fleet.coordinator.admin import ROUTES
from fleet.identity import Identity
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import DeviceAdd, PushRequest, StatusRequest
from fleet.protocol.permissions import ADMIN_ACTIONS, AUDITED_ACTIONS
from fleet.wire import encode

NOW = 1_700_000_000.0
ROOT = Identity.generate()
COORD = Identity.generate()


def test_every_admin_request_has_one_route_with_the_shared_action() -> None:
    assert ROUTES.keys() == ADMIN_ACTIONS.keys()
    for kind, route in ROUTES.items():
        assert route.action is ADMIN_ACTIONS[kind]
    distinct = {id(action): action for action in ADMIN_ACTIONS.values()}.values()
    names = [action.name for action in distinct]  # versions of a request share one action
    assert len(names) == len(set(names))
    assert ADMIN_ACTIONS[PushRequest].name in AUDITED_ACTIONS
    assert ADMIN_ACTIONS[StatusRequest].name not in AUDITED_ACTIONS  # reads are not audited


@pytest.mark.parametrize(
    ("action", "problem"),
    [("device-add", None), ("status", "unknown action 'status'"), ("nope", "unknown action")],
)
def test_the_audit_replay_knows_exactly_the_audited_actions(
    action: str, problem: str | None
) -> None:
    body = DeviceAdd(node_id=Identity.generate().node_id, name="kiosk", tags=())
    entry = make_entry(
        id=1,
        time=NOW,
        actor=str(ROOT.node_id),
        action=action,
        outcome=Outcome.ACCEPTED,
        detail={},
        request=encode(make_admin_request(ROOT, COORD.node_id, body, now=NOW)),
        prev_hash=GENESIS,
    )
    signer, request = signed_request(entry)
    result = AuthorityReplay({ROOT.node_id})(entry, signer, request)
    if problem is None:
        assert result is None
    else:
        assert result is not None
        assert result.startswith(problem)
