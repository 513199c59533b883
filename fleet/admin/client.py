"""AdminClient: signed admin requests to the coordinator, one bidirectional stream each.

The client works over anything that opens bidirectional streams (a mesh Connection in real
use; an in-memory pair in tests). `fleet.admin.connect.open_admin_client` sets up the mesh
Endpoint and the connection. Every wait is bounded by `timeout`, except waiting for the next
status change of a watch, which is bounded by the connection itself: the mesh keeps it alive
with keepalives and ends it when the coordinator goes silent for its idle timeout.

A request that changes something (fleet.protocol.permissions: not read-only) whose answer
does not come in time is sent again, the very same signed bytes with the same nonce, up to
`attempts` times: the coordinator answers a repeat with the reply it gave the first time, so
a push that was committed while its answer was lost is reported accepted, once. When no
attempt is answered the client raises OutcomeUnknown: never "failed" for what may be done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Protocol, TypeVar

from fleet.admin.errors import (
    CoordinatorRefused,
    CoordinatorUnreachable,
    OutcomeUnknown,
    ProtocolViolation,
)
from fleet.capability import EMPTY_CHAIN, Chain, SignedRevocation
from fleet.identity import Identity, NodeId
from fleet.log import get_logger
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import (
    AgentState,
    AuditPage,
    AuditQuery,
    CertificateChain,
    CertificateLookup,
    DeviceAdd,
    DeviceAddBatch,
    DeviceApprove,
    DeviceBatchAdded,
    DeviceEntry,
    DeviceInfo,
    DeviceList,
    DeviceListReply,
    DeviceRemove,
    DeviceStatus,
    EnrollTokenRevoke,
    ErrorReply,
    GrantRecord,
    NextSequence,
    NextSequenceReply,
    OkReply,
    PushAccepted,
    PushLookup,
    PushLookupReply,
    PushRequest,
    RevokeRequest,
    StatusPage,
    StatusQuery,
    StatusRequest,
    StatusSnapshot,
    StatusSummary,
    StatusUpdate,
    TargetCheck,
    TargetCheckReply,
)
from fleet.protocol.permissions import ADMIN_ACTIONS
from fleet.protocol.stream import recv_message, send_message
from fleet.wire import ByteReader, Message, SignedEnvelope, WireError

M = TypeVar("M", bound=Message)

log = get_logger(__name__)

ATTEMPTS = 3  # sends of one changing request whose answer does not come in time
STATUS_PAGE = 5000  # status rows asked for per request (the coordinator may send fewer)


class StreamWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class StreamOpener(Protocol):
    """What the client needs from a connection: fleet.mesh.Connection fits."""

    async def open_bi(self) -> tuple[ByteReader, StreamWriter]: ...


# Failures of the transport below the fleet protocol, whatever the transport; the caller
# adds its own (fleet.admin.connect passes fleet.mesh.MeshError).
BASE_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError)


class AdminClient:
    def __init__(
        self,
        identity: Identity,
        coordinator: NodeId,
        connection: StreamOpener,
        *,
        timeout: float,
        transport_errors: tuple[type[BaseException], ...] = (),
        chain: Chain = EMPTY_CHAIN,
        attempts: int = ATTEMPTS,
    ) -> None:
        self.identity = identity
        self.attempts = attempts
        self.chain = chain  # the admin's capability chain, sent with every request
        self._transport_errors = BASE_TRANSPORT_ERRORS + transport_errors
        self.coordinator = coordinator
        self.timeout = timeout
        self._connection = connection

    # -- requests ---------------------------------------------------------------------------

    async def devices(self) -> tuple[DeviceInfo, ...]:
        return (await self.call(DeviceList(), DeviceListReply)).devices

    async def add_device(self, node_id: NodeId, name: str, tags: tuple[str, ...]) -> None:
        await self.call(DeviceAdd(node_id=node_id, name=name, tags=tags), OkReply)

    async def add_devices(
        self, entries: tuple[DeviceEntry, ...], *, skip_existing: bool
    ) -> DeviceBatchAdded:
        batch = DeviceAddBatch(devices=entries, skip_existing=skip_existing)
        return await self.call(batch, DeviceBatchAdded)

    async def revoke_enroll_token(self, token_id: bytes) -> None:
        await self.call(EnrollTokenRevoke(token_id=token_id), OkReply)

    async def approve_device(self, node_id: NodeId) -> None:
        await self.call(DeviceApprove(node_id=node_id), OkReply)

    async def remove_device(self, name: str) -> None:
        await self.call(DeviceRemove(name=name), OkReply)

    async def next_sequence(self) -> int:
        return (await self.call(NextSequence(), NextSequenceReply)).sequence

    async def push(
        self,
        announcement: SignedEnvelope,
        *,
        devices: tuple[NodeId, ...],
        targets: tuple[str, ...],
        legacy: SignedEnvelope | None = None,
    ) -> PushAccepted:
        """Push an Announcement v3 with its explicit ids and the targets as typed."""
        request = PushRequest(
            announcement=announcement, devices=devices, targets=targets, legacy=legacy
        )
        return await self.call(request, PushAccepted)

    async def record_grant(self, chain: Chain) -> None:
        await self.call(GrantRecord(chain=chain), OkReply)

    async def revoke(self, revocation: SignedRevocation) -> None:
        await self.call(RevokeRequest(revocation=revocation), OkReply)

    async def certificate_chain(self, certificate: bytes) -> Chain:
        return (await self.call(CertificateLookup(certificate=certificate), CertificateChain)).chain

    async def audit_page(self, after: int, limit: int = 500) -> AuditPage:
        return await self.call(AuditQuery(after=after, limit=limit), AuditPage)

    async def check_targets(self, targets: tuple[str, ...]) -> TargetCheckReply:
        return await self.call(TargetCheck(targets=targets), TargetCheckReply)

    async def status(self) -> StatusSnapshot:
        return await self.call(StatusRequest(watch=False), StatusSnapshot)

    async def push_status(self, sequence: int) -> PushLookupReply:
        return await self.call(PushLookup(sequence=sequence), PushLookupReply)

    async def status_query(
        self,
        *,
        states: tuple[AgentState, ...] = (),
        tags: tuple[str, ...] = (),
        offline: bool = False,
        rows: bool = True,
        page: int = STATUS_PAGE,
    ) -> tuple[tuple[DeviceStatus, ...], StatusSummary]:
        """The rows matching the filters (read page by page; none unless `rows`) and the
        summary of all of them (from the first page)."""
        query = StatusQuery(
            states=states,
            tags=tags,
            offline=offline,
            after=None,
            limit=page if rows else 0,
            summary=True,
        )
        found: list[DeviceStatus] = []
        summary: StatusSummary | None = None
        while True:
            reply = await self.call(query, StatusPage)
            summary = summary or reply.summary
            found.extend(reply.devices)
            if not rows or not reply.more:
                break
            if not reply.devices:
                raise ProtocolViolation("the coordinator sent an empty status page with more")
            query = StatusQuery(
                states=states,
                tags=tags,
                offline=offline,
                after=reply.devices[-1].node_id,
                limit=page,
                summary=False,
            )
        if summary is None:
            raise ProtocolViolation("the coordinator sent no status summary")
        return tuple(found), summary

    async def watch(self) -> AsyncGenerator[StatusSnapshot | StatusUpdate, None]:
        """The current snapshot, then a StatusUpdate for every change, until closed.

        Use with contextlib.aclosing so the stream is closed when the caller stops.
        """
        reader, writer = await self._open()
        try:
            with self._translated("status watch"):
                await send_message(
                    writer, self._request(StatusRequest(watch=True)), timeout=self.timeout
                )
                yield await self._reply(reader, StatusSnapshot, timeout=self.timeout)
                while True:
                    try:
                        message = await recv_message(reader, timeout=None)
                    except EOFError:
                        raise CoordinatorUnreachable(
                            "the coordinator ended the status stream"
                        ) from None
                    yield self._expect(message, StatusUpdate)
        finally:
            writer.close()

    async def call(self, body: Message, expected: type[M]) -> M:
        """Send one signed request and return its reply; ErrorReply -> CoordinatorRefused.

        A changing request is sent again, unchanged, when its answer does not come in time
        (OutcomeUnknown after the last attempt); a read is sent once.
        """
        what = type(body).__name__
        envelope = self._request(body)
        action = ADMIN_ACTIONS.get(type(body))
        attempts = 1 if action is None or action.read_only else max(1, self.attempts)
        for attempt in range(1, attempts + 1):
            try:
                return await self._send(envelope, expected, what)
            except _NoAnswer as exc:
                if attempts == 1:
                    raise CoordinatorUnreachable(str(exc)) from exc
                if attempt < attempts:
                    log.warning("admin_request_retry", request=what, attempt=attempt + 1)
                    continue
                raise OutcomeUnknown(
                    f"no answer from the coordinator within {self.timeout:g} s to "
                    f"{attempts} sends of the same {what}: it may or may not have been "
                    "carried out"
                ) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _send(self, envelope: SignedEnvelope, expected: type[M], what: str) -> M:
        reader, writer = await self._open()
        try:
            with self._translated(what):
                await send_message(writer, envelope, timeout=self.timeout)
                try:
                    return await self._reply(reader, expected, timeout=self.timeout)
                except TimeoutError:
                    raise _NoAnswer(
                        f"no answer from the coordinator within {self.timeout:g} s ({what})"
                    ) from None
        finally:
            writer.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _request(self, body: Message) -> SignedEnvelope:
        return make_admin_request(self.identity, self.coordinator, body, chain=self.chain)

    async def _open(self) -> tuple[ByteReader, StreamWriter]:
        with self._translated("opening a stream"):
            async with asyncio.timeout(self.timeout):
                return await self._connection.open_bi()

    async def _reply(self, reader: ByteReader, expected: type[M], *, timeout: float) -> M:
        try:
            message = await recv_message(reader, timeout=timeout)
        except EOFError:
            raise ProtocolViolation(
                f"the coordinator closed the stream instead of answering with {expected.__name__}"
            ) from None
        return self._expect(message, expected)

    @staticmethod
    def _expect(message: Message, expected: type[M]) -> M:
        if isinstance(message, ErrorReply):
            raise CoordinatorRefused(message.code, message.message)
        if not isinstance(message, expected):
            raise ProtocolViolation(
                f"expected {expected.__name__} from the coordinator, got {type(message).__name__}"
            )
        return message

    def _translated(self, what: str) -> _Translate:
        return _Translate(what, self.timeout, self._transport_errors)


class _NoAnswer(Exception):
    """A request was sent and its reply did not come in time (it may have been received)."""


class _Translate:
    """Turns transport and wire failures into the admin errors a person can act on."""

    def __init__(
        self, what: str, timeout: float, transport_errors: tuple[type[BaseException], ...]
    ) -> None:
        self.what = what
        self.timeout = timeout
        self.transport_errors = transport_errors

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None or isinstance(
            exc, CoordinatorRefused | ProtocolViolation | CoordinatorUnreachable | _NoAnswer
        ):
            return
        if isinstance(exc, TimeoutError):
            raise CoordinatorUnreachable(
                f"no answer from the coordinator within {self.timeout:g} s ({self.what})"
            ) from exc
        if isinstance(exc, WireError):
            raise ProtocolViolation(
                f"bad message from the coordinator ({self.what}): {exc}"
            ) from exc
        if isinstance(exc, self.transport_errors):
            raise CoordinatorUnreachable(
                f"lost the connection to the coordinator ({self.what}): {exc or type(exc).__name__}"
            ) from exc
