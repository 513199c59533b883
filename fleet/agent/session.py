"""The agent's one connection to the coordinator: dial, Hello/Welcome, then deliveries down and
status up, reconnecting with jittered backoff for as long as the agent runs.

How the connection is made is behind `Dialer` (the mesh in production, an in-memory pipe in
unit tests): it returns a `Channel`, the control stream of a fresh connection. The session
talks to the agent through `AgentSide`: one method, `receive()`, for every message from the
coordinator (the Welcome aside, which is the session's own), and its outbox, which also
gives the Hello that opens each session.

No reconnect storms: after a session that was welcomed ends (a coordinator restart ends
them all at once), the first redial waits a uniform draw in [0, reconnect_spread], so a fleet
comes back spread over that window instead of in the same 100 ms; after a failed dial the
jittered backoff applies; and a coordinator too busy to welcome us answers Busy with a
retry-after, which we honour (plus up to half again of jitter) instead of timing out and
redialing into the queue. The Welcome timeout is a setting, since under load it is the
coordinator's queue, not the network, that decides how long a Welcome takes.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from fleet.agent.backoff import Backoff
from fleet.agent.outbox import Outbox
from fleet.log import get_logger
from fleet.protocol.agent_session import Sender, SessionPhase, is_legal
from fleet.protocol.messages import Busy, Welcome
from fleet.protocol.stream import recv_message, send_message
from fleet.wire import ByteReader, ByteWriter, Message, UnexpectedMessageType, WireError

log = get_logger("fleet.agent.session")


class Channel(Protocol):
    """The control stream of one connection to the coordinator."""

    @property
    def reader(self) -> ByteReader: ...

    @property
    def writer(self) -> ByteWriter: ...

    @property
    def path(self) -> str | None: ...  # "direct", "relay" or None, for logs

    async def close(self) -> None: ...


class AgentSide(Protocol):
    """What the session needs of the agent (fleet.agent.agent.Agent)."""

    @property
    def outbox(self) -> Outbox: ...

    def receive(self, message: Message) -> list[Message]: ...


class Dialer(Protocol):
    # The transport's own error types (e.g. the mesh's MeshError): they end one session.
    errors: tuple[type[BaseException], ...]

    async def __call__(self, timeout: float) -> Channel: ...


class SessionEnded(Exception):
    """The coordinator closed the control stream (or the connection was lost)."""


class CoordinatorBusy(Exception):
    """The coordinator answered Busy: dial again after `retry_after` seconds."""

    def __init__(self, busy: Busy) -> None:
        super().__init__(f"coordinator busy ({busy.reason}); retry after {busy.retry_after} s")
        self.retry_after = busy.retry_after


DEFAULT_WELCOME_TIMEOUT = 30.0
DEFAULT_RECONNECT_SPREAD = 10.0
MAX_RETRY_AFTER = 600.0  # a Busy's retry-after is capped at this (a bad value must not park us)


@dataclass(frozen=True)
class SessionConfig:
    connect_timeout: float = 20.0  # a handshake may queue behind a herd's on the coordinator
    welcome_timeout: float = DEFAULT_WELCOME_TIMEOUT
    send_timeout: float = 10.0
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))
    # After a welcomed session ends: the first redial waits uniform in [0, reconnect_spread].
    reconnect_spread: float = DEFAULT_RECONNECT_SPREAD


# Everything a dead or misbehaving peer can make the session raise; each ends one session.
_SESSION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    TimeoutError,
    WireError,
    SessionEnded,
    ConnectionError,
)


class CoordinatorSession:
    def __init__(
        self, agent: AgentSide, dialer: Dialer, config: SessionConfig | None = None
    ) -> None:
        self.agent = agent
        self.outbox = agent.outbox
        self.dialer = dialer
        self.config = config or SessionConfig()
        self.connected = asyncio.Event()  # set while a session is up (for tests and logs)
        self.approved: bool | None = None
        self.sessions = 0
        self.dials = 0  # connections made (for tests and benchmarks: per welcomed session)
        self.busy_answers = 0
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret

    async def run(self) -> None:
        """Forever: connect, serve, and after any failure wait a jittered backoff."""
        errors = (*_SESSION_ERRORS, *self.dialer.errors)
        attempt = 0
        while True:
            retry_after: float | None = None
            welcomed = False
            try:
                channel = await self.dialer(self.config.connect_timeout)
            except errors as exc:
                log.info("agent_connect_failed", error=str(exc) or type(exc).__name__)
            else:
                self.dials += 1
                try:
                    welcomed = await self._serve(channel, errors)
                except CoordinatorBusy as busy:
                    self.busy_answers += 1
                    retry_after = busy.retry_after
                    log.info("agent_coordinator_busy", error=str(busy))
                except Exception:  # a bug must not end the agent: log it and reconnect
                    log.exception("agent_session_error")
                finally:
                    self.connected.clear()
                    await channel.close()
            if welcomed:
                attempt = 0
            delay = self._reconnect_delay(welcomed, retry_after, attempt)
            if not welcomed:
                attempt += 1
            log.info("agent_reconnect_wait", seconds=round(delay, 2))
            await asyncio.sleep(delay)

    def _reconnect_delay(self, welcomed: bool, retry_after: float | None, attempt: int) -> float:
        """How long to wait before the next dial (see the module docstring)."""
        draw = self._rng.random()
        if retry_after is not None and not math.isnan(retry_after):
            wait = min(max(retry_after, 0.0), MAX_RETRY_AFTER)
            return wait * (1 + draw / 2)
        if welcomed:
            return draw * self.config.reconnect_spread
        return self.config.backoff.delay(attempt, self._rng)

    async def _serve(self, channel: Channel, errors: tuple[type[BaseException], ...]) -> bool:
        """One session; True if it got as far as a Welcome (then the backoff starts over)."""
        cfg = self.config
        welcomed = False
        try:
            await send_message(channel.writer, self.outbox.hello(), timeout=cfg.send_timeout)
            welcome = await recv_message(channel.reader, timeout=cfg.welcome_timeout)
            if isinstance(welcome, Busy):
                raise CoordinatorBusy(welcome)
            if not isinstance(welcome, Welcome):
                raise UnexpectedMessageType(
                    f"expected {Welcome.wire_type}, got {welcome.wire_type}"
                )
            welcomed = True
            self._welcome(welcome)
            self.sessions += 1
            self.outbox.resync()
            self.connected.set()
            log.info("agent_connected", path=channel.path, approved=welcome.approved)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._receive(channel))
                tasks.create_task(self._send(channel))
        except* errors as group:
            first = group.exceptions[0]
            log.info("agent_session_ended", error=str(first) or type(first).__name__)
        return welcomed

    def _welcome(self, welcome: Welcome) -> None:
        if welcome.approved != self.approved:
            if welcome.approved:
                log.info("agent_approved", name=welcome.name)
            else:
                log.warning("agent_pending", detail="not approved yet; waiting")
        self.approved = welcome.approved

    async def _receive(self, channel: Channel) -> None:
        # No read timeout: the mesh's keepalives and idle timeout detect a dead coordinator.
        while True:
            try:
                message = await recv_message(channel.reader, timeout=None)
            except EOFError:
                raise SessionEnded("coordinator closed the control stream") from None
            if not is_legal(SessionPhase.ESTABLISHED, Sender.COORDINATOR, message):
                log.warning("agent_unexpected_message", type=type(message).__name__)
                continue
            if isinstance(message, Welcome):
                self._welcome(message)
                continue
            for reply in self.agent.receive(message):
                self.outbox.put(reply)  # in order, and kept across a reconnect if it matters

    async def _send(self, channel: Channel) -> None:
        outbox = self.outbox
        while True:
            message = await outbox.get()
            try:
                await send_message(channel.writer, message, timeout=self.config.send_timeout)
            except BaseException:
                outbox.requeue(message)  # a rejection must still reach the coordinator
                raise
