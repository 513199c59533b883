"""The asyncio adapter: mesh connections in, CoordinatorService calls, messages out.

One TaskGroup owns everything: an accept loop per ALPN and one task per connection, each of
which owns its own per-stream tasks. A connection's failure (timeout, garbage, reset) ends
that connection only; nothing an agent or admin sends can escape its handler.

Admission: agents' Hellos pass the HelloGate (bounded, queued, "busy, retry after" for a
second connection of a device being welcomed or a queue too long to wait in); admins' requests
do not, and the admins known so far may use the mesh's reserved slots (KnownAdmins).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

from fleet.coordinator.admin import MAX_ADMIN_REQUEST, AdminResult
from fleet.coordinator.admins import KnownAdmins
from fleet.coordinator.hello_gate import HelloGate, Ticket, TurnedAway
from fleet.coordinator.refusals import RequestFacts
from fleet.coordinator.service import CoordinatorService
from fleet.coordinator.sessions import AgentSession
from fleet.coordinator.watchers import StatusWatcher, WatcherOverflow
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol import alpn
from fleet.protocol.agent_session import Sender, SessionPhase, is_legal, opens_session
from fleet.protocol.messages import (
    AnyHello,
    Busy,
    ErrorReply,
    StatusUpdate,
)
from fleet.protocol.stream import MESSAGE_CAP, recv_message, send_message
from fleet.wire import (
    ByteReader,
    FrameTooLarge,
    UnexpectedMessageType,
    read_frame,
    write_frame,
)

log = get_logger(__name__)


class StreamWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def write_eof(self) -> None: ...


class MeshConnection(Protocol):
    """What the server needs of fleet.mesh.Connection."""

    @property
    def remote_id(self) -> NodeId: ...

    @property
    def path(self) -> str | None: ...

    async def accept_bi(
        self, timeout: float | None = None
    ) -> tuple[asyncio.StreamReader, StreamWriter]: ...

    async def close(self, error_code: int = 0, reason: str = "") -> None: ...


class Listener(Protocol):
    """What the server needs of fleet.mesh.Endpoint."""

    async def accept(
        self, alpn: str | None = None, timeout: float | None = None
    ) -> MeshConnection: ...


@dataclass(frozen=True)
class ServerLimits:
    hello_timeout: float = 10.0  # an agent must open its control stream and say Hello
    send_timeout: float = 15.0  # one message must leave within this, or the peer is dropped
    request_timeout: float = 10.0  # an admin must send its request after opening a stream
    admin_idle: float = 60.0  # an admin connection with no new stream is closed
    agent_queue: int = 256  # messages queued for one agent before it is dropped as too slow
    admin_streams: int = 16  # concurrent requests per admin connection


BUSY_LINGER = 5.0  # seconds an agent answered Busy has to read it and close


class MeshAgentLink:
    """AgentLink over a mesh connection: a bounded queue drained by the connection's task."""

    def __init__(self, conn: MeshConnection, writer: StreamWriter, limit: int) -> None:
        self._conn = conn
        self._writer = writer
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(limit)
        self.closed = asyncio.Event()
        self.reason = ""

    @property
    def remote_id(self) -> NodeId:
        return self._conn.remote_id

    @property
    def path(self) -> str | None:
        return self._conn.path

    def send(self, payload: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self.close("agent does not read its messages (send queue full)")

    def close(self, reason: str) -> None:
        if not self.closed.is_set():
            self.reason = reason
            self.closed.set()

    async def run_sender(self, timeout: float) -> None:
        try:
            while True:
                payload = await self._queue.get()
                await write_frame(self._writer, payload, cap=MESSAGE_CAP, timeout=timeout)
        except Exception as exc:  # any failure to send ends this connection only
            self.close(f"send failed: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class CoordinatorServer:
    def __init__(
        self,
        service: CoordinatorService,
        limits: ServerLimits | None = None,
        *,
        gate: HelloGate | None = None,
        admins: KnownAdmins | None = None,
    ) -> None:
        self.service = service
        self.limits = limits or ServerLimits()
        self.gate = gate or HelloGate()
        self.admins = admins if admins is not None else KnownAdmins(service.trust_roots)
        self._turns: dict[Ticket, asyncio.Future[None]] = {}  # queued Hellos' wake-ups

    async def serve(self, listener: Listener) -> None:
        """Accept agents and admins until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._accept_loop(listener, alpn.AGENT, tg, self._agent))
            tg.create_task(self._accept_loop(listener, alpn.ADMIN, tg, self._admin))

    async def _accept_loop(
        self,
        listener: Listener,
        name: str,
        tg: asyncio.TaskGroup,
        handler: _Handler,
    ) -> None:
        while True:
            conn = await listener.accept(name)
            tg.create_task(self._guarded(handler(conn), conn, name))

    async def _guarded(self, work: Awaitable[None], conn: MeshConnection, name: str) -> None:
        """Run one connection's handler; whatever goes wrong stays inside it."""
        try:
            await work
        except Exception as exc:
            log.warning(
                "connection_failed", peer=conn.remote_id.short(), alpn=name, error=_describe(exc)
            )
        finally:
            with contextlib.suppress(Exception):
                await conn.close(reason="closed by coordinator")

    # ------------------------------------------------------------------ agents

    async def _agent(self, conn: MeshConnection) -> None:
        limits = self.limits
        try:
            reader, writer = await conn.accept_bi(timeout=limits.hello_timeout)
            hello = await recv_message(reader, timeout=limits.hello_timeout)
            if not opens_session(hello):  # any version: 1 and 2 are older agents
                raise UnexpectedMessageType(f"expected fleet.agent.hello, got {hello.wire_type}")
        except Exception as exc:
            log.info("agent_dropped", peer=conn.remote_id.short(), reason=_describe(exc))
            return
        link = MeshAgentLink(conn, writer, limits.agent_queue)
        session = await self._admitted_hello(conn, reader, writer, link, hello)
        if session is None:
            return
        try:
            async with asyncio.TaskGroup() as tg:
                sender = tg.create_task(link.run_sender(limits.send_timeout))
                receiver = tg.create_task(self._agent_receive(session, reader, link))
                await link.closed.wait()
                sender.cancel()
                receiver.cancel()
        finally:
            log.info("agent_disconnected", peer=conn.remote_id.short(), reason=link.reason)
            await self.service.agent_gone(session)

    async def _admitted_hello(
        self,
        conn: MeshConnection,
        reader: asyncio.StreamReader,
        writer: StreamWriter,
        link: MeshAgentLink,
        hello: AnyHello,
    ) -> AgentSession | None:
        """The Hello through the gate: Busy (None), or its turn and then the service's answer."""
        loop = asyncio.get_running_loop()
        ticket = self.gate.arrive(conn.remote_id, loop.time())
        if isinstance(ticket, TurnedAway):
            await self._busy(conn, reader, writer, ticket, loop.time())
            return None
        timed_out = False
        try:
            if ticket.started is None:
                turn = self._turns[ticket] = loop.create_future()
                # Bounded: the gate turns newcomers away beyond max_wait, so this is slack.
                slack = self.gate.limits.max_wait * 2 + self.limits.hello_timeout
                try:
                    async with asyncio.timeout(slack):
                        await turn
                except TimeoutError:
                    timed_out = True
            if not timed_out:
                return await self.service.agent_hello(link, hello)
        finally:
            self._turns.pop(ticket, None)
            self._wake(self.gate.finish(ticket, loop.time()))
        late = TurnedAway(self.gate.limits.max_wait, "waited too long for its turn")
        await self._busy(conn, reader, writer, late, loop.time())  # its place is freed first
        return None

    def _wake(self, started: list[Ticket]) -> None:
        """Let the Hellos the gate just started go on."""
        for ticket in started:
            waiter = self._turns.get(ticket)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _admin_request(self, work: Awaitable[AdminResult]) -> AdminResult:
        """Handle an admin request ahead of agents: the gate lets fewer Hellos run meanwhile."""
        self.gate.admin_started()
        try:
            return await work
        finally:
            self._wake(self.gate.admin_finished(asyncio.get_running_loop().time()))

    async def _busy(
        self,
        conn: MeshConnection,
        reader: asyncio.StreamReader,
        writer: StreamWriter,
        away: TurnedAway,
        now: float,
    ) -> None:
        """Answer Busy instead of a Welcome, and let the agent close (a close of ours could
        overtake the answer); the caller closes the connection after BUSY_LINGER anyway."""
        peer = conn.remote_id.short()
        log.info("agent_busy", peer=peer, retry_after=away.retry_after, reason=away.reason)
        if self.gate.report_due(now):
            log.warning("coordinator_hellos_turned_away", **self.gate.stats())
        with contextlib.suppress(Exception):
            busy = Busy(retry_after=away.retry_after, reason=away.reason)
            await send_message(writer, busy, timeout=self.limits.send_timeout)
            writer.write_eof()
            async with asyncio.timeout(BUSY_LINGER):
                while await reader.read(4096):
                    pass

    async def _agent_receive(
        self, session: AgentSession, reader: asyncio.StreamReader, link: MeshAgentLink
    ) -> None:
        # No read timeout: agents speak only when their state changes; a dead peer is found
        # by the QUIC idle timeout (keepalives run underneath), which ends this read.
        try:
            while True:
                message = await recv_message(reader, timeout=None)
                if not is_legal(SessionPhase.ESTABLISHED, Sender.AGENT, message):
                    link.close(f"unexpected {message.wire_type} from agent")
                    return
                await self.service.agent_message(session, message)
        except EOFError:
            link.close("agent closed its control stream")
        except Exception as exc:
            link.close(_describe(exc))

    # ------------------------------------------------------------------ admins

    async def _admin(self, conn: MeshConnection) -> None:
        slots = asyncio.Semaphore(self.limits.admin_streams)
        async with asyncio.TaskGroup() as tg:
            while True:
                await slots.acquire()
                try:
                    reader, writer = await conn.accept_bi(timeout=self.limits.admin_idle)
                except Exception:
                    slots.release()
                    break  # idle, or the admin closed the connection
                tg.create_task(self._admin_stream(conn, reader, writer, slots))

    async def _admin_stream(
        self,
        conn: MeshConnection,
        reader: asyncio.StreamReader,
        writer: StreamWriter,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            try:
                raw = await read_frame(
                    reader, cap=MAX_ADMIN_REQUEST, timeout=self.limits.request_timeout
                )
            except FrameTooLarge as exc:
                result = await self._oversized(conn, reader, exc)
            else:
                if raw is None:
                    return
                result = await self._admin_request(self.service.handle_admin(raw, conn.remote_id))
                if not isinstance(result.reply, ErrorReply):
                    self.admins.add(conn.remote_id)  # authenticated: may use reserved slots
            try:
                await send_message(writer, result.reply, timeout=self.limits.send_timeout)
                if result.watcher is None:
                    writer.write_eof()
            finally:
                # Committed before the reply, delivered after it: even if the admin is gone.
                if result.delivery is not None:
                    await self.service.deliver(result.delivery)
            if result.watcher is not None:
                await self._watch(result.watcher, reader, writer)
        except Exception as exc:
            log.info("admin_stream_failed", peer=conn.remote_id.short(), error=_describe(exc))
        finally:
            slots.release()

    async def _oversized(
        self, conn: MeshConnection, reader: ByteReader, exc: FrameTooLarge
    ) -> AdminResult:
        """A request over the cap: read its body away (hashing, keeping nothing) within the
        request timeout so the stream stays in step, then refuse it as too large."""
        size = exc.size if exc.size is not None else MAX_ADMIN_REQUEST + 1
        digest: bytes | None = None
        with contextlib.suppress(TimeoutError, EOFError, asyncio.IncompleteReadError):
            digest = await skim(reader, size, timeout=self.limits.request_timeout)
        return await self.service.refuse_unread(conn.remote_id, RequestFacts(size, digest))

    async def _watch(
        self, watcher: StatusWatcher, reader: asyncio.StreamReader, writer: StreamWriter
    ) -> None:
        """Stream StatusUpdate rows until the admin closes its side or falls behind."""

        async def until_eof() -> None:
            try:
                while await reader.read(4096):
                    pass
            except Exception:  # noqa: S110 - a broken stream ends the watch like EOF does
                pass
            finally:
                self.service.unwatch(watcher)

        async def pump(eof: asyncio.Task[None]) -> None:
            try:
                while True:
                    row = await watcher.next()
                    await send_message(
                        writer, StatusUpdate(device=row), timeout=self.limits.send_timeout
                    )
            except WatcherOverflow as exc:
                with contextlib.suppress(Exception):
                    await send_message(
                        writer, ErrorReply(code="overflow", message=str(exc)), timeout=1.0
                    )
            except EOFError:
                pass
            except Exception as exc:
                log.info("status_watch_ended", error=_describe(exc))
            finally:
                eof.cancel()
                with contextlib.suppress(Exception):
                    writer.write_eof()

        try:
            async with asyncio.TaskGroup() as tg:
                eof = tg.create_task(until_eof())
                tg.create_task(pump(eof))
        finally:
            self.service.unwatch(watcher)


SKIM_CHUNK = 64 * 1024


async def skim(reader: ByteReader, size: int, *, timeout: float) -> bytes:
    """Read `size` bytes in chunks, keeping only their SHA-256 (the digest is returned)."""
    digest = hashlib.sha256()
    async with asyncio.timeout(timeout):
        left = size
        while left:
            chunk = await reader.readexactly(min(left, SKIM_CHUNK))
            digest.update(chunk)
            left -= len(chunk)
    return digest.digest()


class _Handler(Protocol):
    def __call__(self, conn: MeshConnection) -> Awaitable[None]: ...
