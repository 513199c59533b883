"""Every decoder of bytes from outside, as a fuzz target (harness/attack/fuzzing.py).

Each target starts from valid samples made here with real keys, and names the refusals its
module documents. Mutated signed data almost never survives the signature check, so the
`signed:` targets fuzz the payload and then sign it with a trusted key: what a holder of a
valid key (a rogue coordinator, an admin out of scope) could send past the signature.
Stateful decoders (relay sessions, the frame decoder) get a fresh session per input, fed in
two pieces so a frame split across reads is exercised too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache

from fleet import stun
from fleet.admin.device_file import DeviceFileError, parse_device_file
from fleet.agent.verify import AnnouncementRefused, verify_announcement
from fleet.audit.checkpoint import BadCheckpoint, open_checkpoint, sign_checkpoint
from fleet.audit.export import ExportError, export_lines, read_export
from fleet.audit.record import GENESIS, Outcome, make_entry
from fleet.audit.verifier import AuditVerifyError, verify_log
from fleet.capability import (
    CapabilityError,
    Chain,
    Permission,
    Scope,
    sign_certificate,
    verify_chain,
)
from fleet.capability.certificate import certificate_id
from fleet.capability.chainfile import ChainFileError, format_chain, parse_chain
from fleet.capability.errors import BadRevocation
from fleet.capability.revocation import SignedRevocation, revoke, verify_revocation
from fleet.coordinator.pushes import BadPush, open_push
from fleet.identity import Identity
from fleet.mesh import disco
from fleet.nix.narinfo import (
    NarInfoError,
    UntrustedNarInfo,
    parse_narinfo,
    parse_public_key,
    verify_narinfo,
)
from fleet.protocol.admin import AdminRequestError, make_admin_request, open_admin_request
from fleet.protocol.enroll_token import (
    EnrollTokenError,
    format_token_file,
    make_enroll_token,
    open_enroll_token,
    parse_token_file,
)
from fleet.protocol.messages import (
    Action,
    AgentState,
    Announcement,
    AnnouncementV2,
    Busy,
    Deliver,
    DeliverV1,
    DeviceAdd,
    DeviceAddBatch,
    DeviceEntry,
    EnrollToken,
    Hello,
    NextSequence,
    PushLookup,
    PushLookupReply,
    PushRecord,
    PushRequest,
    PushRequestV1,
    StatusPage,
    StatusQuery,
    StatusRequest,
    StatusSummary,
    SystemState,
)
from fleet.protocol.targeting import TargetTree, target_tree
from fleet.relay import protocol as relay
from fleet.stun import StunAnswerer
from fleet.wire import (
    FrameDecoder,
    SignedEnvelope,
    Tag,
    WireError,
    decode,
    encode,
    encode_frame,
    open_envelope,
    sign_envelope,
)
from fleet.wire.tags import sign
from harness.attack.fuzzing import Target
from harness.narinfos import CacheKey, narinfo, store_path

NOW = 1_800_000_000.0  # a fixed clock: the same seed gives the same outcome on every day
ROOT = Identity.generate()
ADMIN = Identity.generate()
COORDINATOR = Identity.generate()
DEVICE = Identity.generate()
RELAY = Identity.generate()
CHALLENGE = bytes(range(relay.CHALLENGE_LEN))
CACHE_KEY = CacheKey.generate("cache-1")
TRUSTED_NIX = [parse_public_key(CACHE_KEY.public)]
SYSTEM = store_path("nixos-system-fuzz")


@cache
def admin_chain() -> Chain:
    cert = sign_certificate(
        ROOT, ADMIN.node_id, [Permission.PUSH, Permission.READ], Scope.of(tags=["lab"]),
        not_before=NOW - 3600, not_after=NOW + 3600, may_delegate=False,
    )  # fmt: skip
    return Chain(certificates=(cert,))


def announcement(signer: Identity = ROOT, chain: Chain | None = None) -> SignedEnvelope:
    body = AnnouncementV2(
        sequence=7, devices=(DEVICE.node_id,), targets=("tag:lab",), store_path=SYSTEM,
        substituters=("https://cache.example",), action=Action.SWITCH, issued_at=NOW - 60,
        valid_until=NOW + 600, chain=chain if chain is not None else Chain(certificates=()),
    )  # fmt: skip
    return sign_envelope(signer, Tag.ANNOUNCEMENT, body)


OTHERS = tuple(Identity.generate().node_id for _ in range(4))


@cache
def targeted() -> tuple[Announcement, TargetTree]:
    """An Announcement v3 naming DEVICE among explicit ids, and `tag:lab` as its selector."""
    tree = target_tree((*OTHERS, DEVICE.node_id))
    body = Announcement(
        sequence=7, selector=("lab",), devices_root=tree.root, devices_count=tree.count,
        store_path=SYSTEM, substituters=("https://cache.example",), action=Action.SWITCH,
        issued_at=NOW - 60, valid_until=NOW + 600, chain=Chain(certificates=()),
    )  # fmt: skip
    return body, tree


@cache
def deliver_v2_samples() -> tuple[bytes, ...]:
    body, tree = targeted()
    envelope = sign_envelope(ROOT, Tag.ANNOUNCEMENT, body)
    return (encode(Deliver(announcement=envelope, proof=tree.proofs[DEVICE.node_id])),)


def _deliver_v2(data: bytes) -> None:
    deliver = decode(data, Deliver)
    verify_announcement(
        deliver.announcement, trust_roots={ROOT.node_id}, device=DEVICE.node_id, floor=0,
        current=None, now=NOW, tags=(), proof=deliver.proof,
    )  # fmt: skip


def _signed_announcement_v3(data: bytes) -> None:
    _, tree = targeted()
    verify_announcement(
        resign(ROOT, Tag.ANNOUNCEMENT, data), trust_roots={ROOT.node_id}, device=DEVICE.node_id,
        floor=0, current=None, now=NOW, tags=(), proof=tree.proofs[DEVICE.node_id],
    )  # fmt: skip


@cache
def push_request_samples() -> tuple[bytes, ...]:
    body, tree = targeted()
    request = PushRequest(
        announcement=sign_envelope(ADMIN, Tag.ANNOUNCEMENT, body), devices=tree.devices,
        targets=("tag:lab", "kiosk"), legacy=announcement(ADMIN),
    )  # fmt: skip
    return (encode(request),)


def _push_request(data: bytes) -> None:
    push = open_push(decode(data, PushRequest))
    assert push.signer == ADMIN.node_id, "a forged announcement verified"


@cache
def message_samples() -> tuple[bytes, ...]:
    hello = Hello(
        agent_version="1", current=SystemState(store_path=SYSTEM, generation=3), last_sequence=6,
        state=AgentState.IDLE, state_since=NOW, tags=("lab",),
    )  # fmt: skip
    requests = [
        make_admin_request(ADMIN, COORDINATOR.node_id, body, chain=admin_chain(), now=NOW)
        for body in (NextSequence(), StatusRequest(watch=True),
                     DeviceAdd(node_id=DEVICE.node_id, name="kiosk", tags=("lab",)),
                     DeviceAddBatch(devices=(DeviceEntry(node_id=DEVICE.node_id, name="kiosk",
                                                         tags=("lab",)),), skip_existing=True),
                     PushRequestV1(announcement=announcement(ADMIN, admin_chain())),
                     StatusQuery(states=(AgentState.FAILED,), tags=("lab",), offline=True,
                                 after=DEVICE.node_id, limit=100, summary=True),
                     PushLookup(sequence=7))
    ]  # fmt: skip
    record = PushRecord(
        signer=ADMIN.node_id, store_path=SYSTEM, action=Action.SWITCH, targets=("tag:lab",),
        devices=3, issued_at=NOW, valid_until=NOW + 60, accepted_at=NOW,
    )  # fmt: skip
    summary = StatusSummary(devices=3, online=1, pending=0, states={"applied": 2, "unknown": 1})
    replies = (
        encode(PushLookupReply(sequence=7, accepted=record, highest=9)),
        encode(StatusPage(devices=(), summary=summary, more=True)),
    )
    return (
        encode(hello),
        encode(DeliverV1(announcement=announcement())),
        encode(admin_chain()),
        *(encode(r) for r in requests),
        *replies,
        encode(Busy(retry_after=12.5, reason="queue full")),
    )


def _decode_canonical(data: bytes) -> None:
    message = decode(data)
    assert encode(message) == data, "accepted a non-canonical encoding"


def _open_announcement(data: bytes) -> None:
    signer, _ = open_envelope(data, Tag.ANNOUNCEMENT)
    assert signer in (ROOT.node_id, ADMIN.node_id), "a forged signature verified"


def _frames(data: bytes) -> None:
    decoder = FrameDecoder(cap=4096)
    cut = data[0] % (len(data) + 1) if data else 0
    frames = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
    decoder.end_of_input()
    for frame in frames:
        _decode_canonical(frame)


def _admin_request(data: bytes) -> None:
    opened = open_admin_request(decode(data, SignedEnvelope), COORDINATOR.node_id, now=NOW)
    assert opened.signer == ADMIN.node_id, "a forged admin request verified"


def _deliver(data: bytes) -> None:
    deliver = decode(data, DeliverV1)
    verify_announcement(
        deliver.announcement, trust_roots={ROOT.node_id}, device=DEVICE.node_id, floor=0,
        current=None, now=NOW, tags=("lab",),
    )  # fmt: skip


def _chain(data: bytes) -> None:
    verify_chain(decode(data, Chain), {ROOT.node_id}, NOW)


@cache
def revocation_samples() -> tuple[bytes, ...]:
    cert = admin_chain().certificates[0]
    signed = revoke(ROOT, Chain(certificates=()), certificate_id(cert), reason="lost", now=NOW)
    return (encode(signed),)


def _revocation(data: bytes) -> None:
    verify_revocation(decode(data, SignedRevocation), {ROOT.node_id}, NOW)


def _chain_file(data: bytes) -> None:
    parse_chain(data.decode("utf-8", "replace"), "fuzz")


@cache
def checkpoint_samples() -> tuple[bytes, ...]:
    return (encode(sign_checkpoint(COORDINATOR, 3, bytes(32), NOW)),)


def _checkpoint(data: bytes) -> None:
    open_checkpoint(decode(data, SignedEnvelope), COORDINATOR.node_id)


@cache
def export_samples() -> tuple[bytes, ...]:
    entries, prev = [], GENESIS
    for number, outcome in enumerate((Outcome.ACCEPTED, Outcome.REFUSED), start=1):
        request = encode(make_admin_request(ADMIN, COORDINATOR.node_id, NextSequence(), now=NOW))
        entry = make_entry(
            id=number, time=NOW + number, actor=str(ADMIN.node_id), action="next-sequence",
            outcome=outcome, detail={"n": number}, request=request, prev_hash=prev,
        )  # fmt: skip
        entries.append(entry)
        prev = entry.hash
    checkpoint = sign_checkpoint(COORDINATOR, 2, prev, NOW + 3)
    text = "".join(export_lines(COORDINATOR.node_id, entries, [checkpoint]))
    return (text.encode(),)


def _export(data: bytes) -> None:
    export = read_export(data.decode("utf-8", "replace").splitlines())
    verify_log(export.entries, export.checkpoints, export.coordinator)


def _client_auth(client: Identity) -> bytes:
    proof = sign(
        client, Tag.RELAY_AUTH, relay.auth_payload(RELAY.node_id, CHALLENGE, client.node_id)
    )
    payload = bytes([relay.PROTOCOL_VERSION]) + client.node_id.raw + proof
    return relay.encode_frame(relay.FrameType.CLIENT_AUTH, payload)


@cache
def relay_server_samples() -> tuple[bytes, ...]:
    login = _client_auth(DEVICE)
    send = relay.encode_frame(relay.FrameType.SEND_PACKET, ADMIN.node_id.raw + b"quic")
    ping = relay.encode_frame(relay.FrameType.PING, b"12345678")
    return (login, login + send + ping, login + send * 3)


def _relay_server(data: bytes) -> None:
    session = relay.RelayServerSession(RELAY, NOW, challenge=CHALLENGE)
    cut = len(data) // 2
    session.receive_data(data[:cut], NOW)
    while session.next_event() is not None:
        pass
    session.receive_data(data[cut:], NOW + 0.1)
    while session.next_event() is not None:
        pass
    session.handle_timer(NOW + 0.2)


@cache
def relay_client_samples() -> tuple[bytes, ...]:
    hello = relay.encode_frame(
        relay.FrameType.SERVER_HELLO,
        bytes([relay.PROTOCOL_VERSION]) + RELAY.node_id.raw + CHALLENGE,
    )
    ok = relay.encode_frame(relay.FrameType.AUTH_OK)
    recv = relay.encode_frame(relay.FrameType.RECV_PACKET, ADMIN.node_id.raw + b"quic")
    gone = relay.encode_frame(relay.FrameType.PEER_GONE, ADMIN.node_id.raw)
    ping = relay.encode_frame(relay.FrameType.PING, b"12345678")
    close = relay.encode_frame(relay.FrameType.CLOSE, b"shutdown")
    failed = relay.encode_frame(relay.FrameType.AUTH_FAILED, b"no")
    return (hello + ok + recv + gone + ping, hello + ok + close, hello + failed)


def _relay_client(data: bytes) -> None:
    session = relay.RelayClientSession(DEVICE, RELAY.node_id, NOW)
    cut = len(data) // 2
    session.receive_data(data[:cut], NOW)
    while session.next_event() is not None:
        pass
    session.receive_data(data[cut:], NOW + 0.1)
    while session.next_event() is not None:
        pass


@cache
def disco_samples() -> tuple[bytes, ...]:
    messages: Sequence[disco.Message] = (
        disco.Ping(bytes(12)),
        disco.Pong(bytes(12), ("192.0.2.1", 4242)),
        disco.CallMeMaybe((("192.0.2.1", 4242), ("2001:db8::1", 1))),
    )
    return tuple(disco.encode(ADMIN, DEVICE.node_id, m, NOW) for m in messages)


def _disco(data: bytes) -> None:
    disco.decode(data, DEVICE.node_id, NOW)


@cache
def stun_samples() -> tuple[bytes, ...]:
    tx = bytes(range(stun.TX_ID_LEN))
    return (stun.binding_request(tx), stun.binding_response(tx, ("192.0.2.1", 3478)))


ANSWERER = StunAnswerer()


class Unanswered(Exception):
    """The STUN answerer dropped the datagram (its way of refusing)."""


def _stun_answer(data: bytes) -> None:
    if ANSWERER.answer(data, ("127.0.0.1", 40000)) is None:
        raise Unanswered


@cache
def narinfo_samples() -> tuple[bytes, ...]:
    dep = store_path("dep")
    return (
        narinfo(SYSTEM, [dep, SYSTEM], key=CACHE_KEY).encode(),
        narinfo(dep, key=CACHE_KEY).encode(),
    )


def _narinfo(data: bytes) -> None:
    verify_narinfo(parse_narinfo(data), TRUSTED_NIX)


def enroll_token() -> SignedEnvelope:
    return make_enroll_token(
        ADMIN, COORDINATOR.node_id, ("lab",), lifetime=3600, uses=2, chain=admin_chain(), now=NOW
    )


def _enroll_token(data: bytes) -> None:
    opened = open_enroll_token(decode(data, SignedEnvelope), COORDINATOR.node_id, NOW)
    assert opened.signer == ADMIN.node_id, "a forged enrollment token verified"


def token_file_samples() -> tuple[bytes, ...]:
    token = enroll_token()
    return (format_token_file(token, decode(token.payload, EnrollToken)).encode(),)


def _token_file(data: bytes) -> None:
    parse_token_file(data.decode("utf-8", "replace"))


def device_file_samples() -> tuple[bytes, ...]:
    node = DEVICE.node_id
    return (
        f"id,name,tags\n{node},kiosk-1,lab kiosk\n".encode(),
        (json.dumps({"id": str(node), "name": "kiosk-1", "tags": ["lab"]}) + "\n").encode(),
    )


def _device_file(data: bytes) -> None:
    parse_device_file(data.decode("utf-8", "replace"))


def resign(signer: Identity, tag: Tag, payload: bytes) -> SignedEnvelope:
    """An envelope around arbitrary payload bytes with a genuine signature."""
    return SignedEnvelope(
        signer=signer.node_id, tag=tag, payload=payload, signature=sign(signer, tag, payload)
    )


def _signed_admin_request(data: bytes) -> None:
    open_admin_request(resign(ADMIN, Tag.ADMIN_REQUEST, data), COORDINATOR.node_id, now=NOW)


def _signed_announcement(data: bytes) -> None:
    verify_announcement(
        resign(ROOT, Tag.ANNOUNCEMENT, data), trust_roots={ROOT.node_id}, device=DEVICE.node_id,
        floor=0, current=None, now=NOW, tags=("lab",),
    )  # fmt: skip


def _signed_certificate(data: bytes) -> None:
    verify_chain(Chain(certificates=(resign(ROOT, Tag.CAPABILITY, data),)), {ROOT.node_id}, NOW)


def _signed_enroll_token(data: bytes) -> None:
    open_enroll_token(resign(ADMIN, Tag.ENROLL_TOKEN, data), COORDINATOR.node_id, NOW)


def _signed_checkpoint(data: bytes) -> None:
    open_checkpoint(resign(COORDINATOR, Tag.AUDIT_CHECKPOINT, data), COORDINATOR.node_id)


def _payloads(envelopes: Sequence[bytes]) -> tuple[bytes, ...]:
    return tuple(decode(e, SignedEnvelope).payload for e in envelopes)


TARGETS: tuple[Target, ...] = (
    Target("wire.decode", message_samples, _decode_canonical, (WireError,)),
    Target("wire.envelope", lambda: (encode(announcement()),), _open_announcement, (WireError,)),
    Target(
        "wire.frames",
        lambda: (b"".join(encode_frame(m, cap=4096) for m in message_samples()),),
        _frames,
        (WireError,),
    ),
    Target(
        "protocol.admin-request",
        lambda: message_samples()[3:-3],  # the admin requests
        _admin_request,
        (WireError, AdminRequestError),
    ),
    Target(
        "agent.deliver", lambda: (message_samples()[1],), _deliver, (WireError, AnnouncementRefused)
    ),
    Target("agent.deliver-v2", deliver_v2_samples, _deliver_v2, (WireError, AnnouncementRefused)),
    Target("coordinator.push-request", push_request_samples, _push_request, (WireError, BadPush)),
    Target(
        "capability.chain", lambda: (encode(admin_chain()),), _chain, (WireError, CapabilityError)
    ),
    Target(
        "capability.chain-file",
        lambda: (format_chain(admin_chain()).encode(),),
        _chain_file,
        (ChainFileError,),
    ),
    Target("capability.revocation", revocation_samples, _revocation, (WireError, BadRevocation)),
    Target("audit.checkpoint", checkpoint_samples, _checkpoint, (WireError, BadCheckpoint)),
    Target("audit.export", export_samples, _export, (ExportError, AuditVerifyError)),
    Target(
        "relay.server-session", relay_server_samples, _relay_server, (relay.RelayProtocolError,)
    ),
    Target(
        "relay.client-session", relay_client_samples, _relay_client, (relay.RelayProtocolError,)
    ),
    Target("mesh.disco", disco_samples, _disco, (disco.DiscoError,)),
    Target("stun.decode", stun_samples, stun.decode, (stun.StunError,)),
    Target("relay.stun-answer", stun_samples, _stun_answer, (Unanswered,)),
    Target("nix.narinfo", narinfo_samples, _narinfo, (NarInfoError, UntrustedNarInfo)),
    Target(
        "protocol.enroll-token",
        lambda: (encode(enroll_token()),),
        _enroll_token,
        (WireError, EnrollTokenError),
    ),
    Target("protocol.enroll-token-file", token_file_samples, _token_file, (ValueError,)),
    Target("admin.device-file", device_file_samples, _device_file, (DeviceFileError,)),
    Target(
        "signed:admin-request",
        lambda: _payloads(message_samples()[3:-3]),
        _signed_admin_request,
        (AdminRequestError,),
    ),
    Target(
        "signed:announcement",
        lambda: _payloads([encode(announcement())]),
        _signed_announcement,
        (AnnouncementRefused,),
    ),
    Target(
        "signed:announcement-v3",
        lambda: _payloads([encode(sign_envelope(ROOT, Tag.ANNOUNCEMENT, targeted()[0]))]),
        _signed_announcement_v3,
        (AnnouncementRefused,),
    ),
    Target(
        "signed:certificate",
        lambda: _payloads([encode(admin_chain().certificates[0])]),
        _signed_certificate,
        (CapabilityError,),
    ),
    Target(
        "signed:enroll-token",
        lambda: _payloads([encode(enroll_token())]),
        _signed_enroll_token,
        (EnrollTokenError,),
    ),
    Target(
        "signed:checkpoint",
        lambda: _payloads(checkpoint_samples()),
        _signed_checkpoint,
        (BadCheckpoint,),
    ),
)
