"""Admin requests verify only for their coordinator, their signer and a fresh moment."""

from __future__ import annotations

import time

import pytest

from fleet.identity import Identity
from fleet.protocol.admin import AdminRequestError, make_admin_request, open_admin_request
from fleet.protocol.messages import DeviceList, NextSequence
from fleet.wire import SignedEnvelope, Tag, sign_envelope


def test_round_trip() -> None:
    admin, coord = Identity.generate(), Identity.generate()
    env = make_admin_request(admin, coord.node_id, DeviceList())
    opened = open_admin_request(env, coord.node_id)
    assert opened.signer == admin.node_id
    assert opened.body == DeviceList()
    assert len(opened.nonce) == 16


def test_wrong_coordinator_refused() -> None:
    admin = Identity.generate()
    env = make_admin_request(admin, Identity.generate().node_id, NextSequence())
    with pytest.raises(AdminRequestError, match="addressed to coordinator") as info:
        open_admin_request(env, Identity.generate().node_id)
    assert info.value.code == "wrong-coordinator"


def test_stale_refused() -> None:
    admin, coord = Identity.generate(), Identity.generate()
    env = make_admin_request(admin, coord.node_id, NextSequence(), now=time.time() - 3600)
    with pytest.raises(AdminRequestError, match="clocks") as info:
        open_admin_request(env, coord.node_id)
    assert info.value.code == "stale"


def test_forged_signer_refused() -> None:
    admin, coord, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    env = make_admin_request(mallory, coord.node_id, NextSequence())
    forged = SignedEnvelope(
        signer=admin.node_id, tag=env.tag, payload=env.payload, signature=env.signature
    )
    with pytest.raises(AdminRequestError) as info:
        open_admin_request(forged, coord.node_id)
    assert info.value.code == "bad-signature"


def test_other_purpose_signature_refused() -> None:
    admin, coord = Identity.generate(), Identity.generate()
    env = sign_envelope(admin, Tag.ANNOUNCEMENT, NextSequence())
    with pytest.raises(AdminRequestError) as info:
        open_admin_request(env, coord.node_id)
    assert info.value.code == "bad-signature"
