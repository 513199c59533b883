"""AdminClient: signed admin requests to the coordinator, one bidirectional stream each.

The client works over anything that opens bidirectional streams (a mesh Connection in real
use; an in-memory pair in tests). `fleet.admin.connect.open_admin_client` sets up the mesh
Endpoint and the connection. Every wait is bounded by `timeout`, except waiting for the next
status change of a watch, which is bounded by the connection itself: the mesh keeps it alive
with keepalives and ends it when the coordinator goes silent for its idle timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Protocol, TypeVar

from fleet.admin.errors import CoordinatorRefused, CoordinatorUnreachable, ProtocolViolation
from fleet.capability import EMPTY_CHAIN, Chain, SignedRevocation
from fleet.identity import Identity, NodeId
from fleet.protocol.admin import make_admin_request
from fleet.protocol.messages import (
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
    EnrollTokenRevoke,
    ErrorReply,
    GrantRecord,
    NextSequence,
    NextSequenceReply,
    OkReply,
    PushAccepted,
    PushRequest,
    RevokeRequest,
    StatusRequest,
    StatusSnapshot,
    StatusUpdate,
    TargetCheck,
    TargetCheckReply,
)
from fleet.protocol.stream import recv_message, send_message
from fleet.wire import ByteReader, Message, SignedEnvelope, WireError

M = TypeVar("M", bound=Message)


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
    ) -> None:
        self.identity = identity
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

    async def push(self, announcement: SignedEnvelope) -> PushAccepted:
        return await self.call(PushRequest(announcement=announcement), PushAccepted)

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
        """Send one signed request and return its reply; ErrorReply -> CoordinatorRefused."""
        what = type(body).__name__
        reader, writer = await self._open()
        try:
            with self._translated(what):
                await send_message(writer, self._request(body), timeout=self.timeout)
                return await self._reply(reader, expected, timeout=self.timeout)
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
            exc, CoordinatorRefused | ProtocolViolation | CoordinatorUnreachable
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
