"""The agent's work side: accept verified announcements and run them one at a time.

`Agent` owns the Updater (procedure + state file), the mailbox of the newest accepted
announcement and the outbox of messages for the coordinator. The connection side (session.py)
calls `on_deliver()` and drains the outbox; `run()` is the worker loop. The two run as sibling
tasks, so the device keeps working while the coordinator is unreachable.

Supersession: a newer announcement cancels a download in progress (or a retry wait), never an
activation: from the end of the download to the final state the procedure runs to its end.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable

from fleet import __version__
from fleet.agent.apply import ApplyConfig, DownloadError, Updater
from fleet.agent.backoff import Backoff
from fleet.agent.revocations import RevocationStore
from fleet.agent.state import StateFile
from fleet.agent.verify import Accepted, AnnouncementRefused, verify_announcement
from fleet.agent.witness import CheckpointWitness
from fleet.capability import SignedRevocation
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol.messages import AnnouncementRejected, Hello, StatusReport, WitnessReport
from fleet.wire import Message, SignedEnvelope

log = get_logger("fleet.agent")


class Outbox:
    """Messages for the coordinator, in order; on reconnect only the latest status matters."""

    def __init__(self, latest: StatusReport, limit: int = 256) -> None:
        self.latest = latest
        self._queue: collections.deque[Message] = collections.deque(maxlen=limit)
        self._ready = asyncio.Event()

    def put_status(self, report: StatusReport) -> None:
        self.latest = report
        self.put(report)

    def put(self, message: Message) -> None:
        self._queue.append(message)
        self._ready.set()

    def resync(self) -> None:
        """After (re)connecting: the current status first, then rejections not sent yet.

        Old status reports are dropped (only the latest matters), but a rejection is the only
        word the coordinator gets of a refused announcement, so it survives the reconnect.
        """
        kept = [m for m in self._queue if isinstance(m, AnnouncementRejected)]
        self._queue.clear()
        self.put(self.latest)
        for message in kept:
            self.put(message)

    def requeue(self, message: Message) -> None:
        """A message whose sending failed goes first again (kept by resync if it matters)."""
        self._queue.appendleft(message)
        self._ready.set()

    async def get(self) -> Message:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()


class Agent:
    def __init__(
        self,
        node_id: NodeId,
        trust_roots: Iterable[NodeId],
        config: ApplyConfig,
        state: StateFile,
        *,
        tags: Iterable[str] = (),
        coordinator: NodeId | None = None,
        retry: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.trust_roots = frozenset(trust_roots)
        self.tags = tuple(tags)  # from local configuration: the scope check trusts only these
        self.clock = clock
        self.revocations = RevocationStore(state.directory, self.trust_roots)
        self.revocations.load(clock())
        self.witness = CheckpointWitness(state.directory, coordinator)  # None: not a witness
        self.witness.load()
        self.retry = retry or Backoff(initial=5.0, maximum=300.0)
        record = state.load()
        self.outbox: Outbox | None = None
        self.updater = Updater(config, state, record, self._publish, clock=clock)
        self.outbox = Outbox(self.updater.report())
        self._next: Accepted | None = None
        self._mail = asyncio.Event()
        self._attempt: asyncio.Task[object] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- connection side ----------------------------------------------------------------

    def _publish(self, report: StatusReport) -> None:
        if self.outbox is not None:
            self.outbox.put_status(report)

    def hello(self) -> Hello:
        status = self.updater.status
        return Hello(
            agent_version=__version__,
            current=self.updater.current(),
            last_sequence=self.updater.procedure.applied_sequence,
            state=status.state,
            state_since=status.since,
            tags=self.tags,
            checkpoint=self.witness.held,
        )

    def floor(self) -> int:
        """The highest sequence applied or in progress; anything new must be above it."""
        seqs = [self.updater.procedure.applied_sequence, self.updater.status.sequence or 0]
        if self._next is not None:
            seqs.append(self._next.announcement.sequence)
        return max(seqs)

    def on_deliver(self, envelope: SignedEnvelope) -> AnnouncementRejected | None:
        """Verify a delivered announcement; queue it, or return the rejection to send."""
        current = self._next.envelope if self._next is not None else self.updater.announcement
        try:
            accepted = verify_announcement(
                envelope,
                trust_roots=self.trust_roots,
                device=self.node_id,
                tags=self.tags,
                revoked=self.revocations.ids(),
                floor=self.floor(),
                current=current,
                now=self.clock(),
            )
        except AnnouncementRefused as exc:
            log.warning("agent_announcement_refused", sequence=exc.sequence, reason=exc.reason)
            return AnnouncementRejected(sequence=exc.sequence, code=exc.code, reason=exc.reason)
        if accepted.duplicate:
            log.info("agent_announcement_duplicate", sequence=accepted.announcement.sequence)
            assert self.outbox is not None
            self.outbox.put(self.outbox.latest)  # tell the sender where we are with it
            return None
        self.offer(accepted)
        return None

    def on_revocations(self, revocations: Iterable[SignedRevocation]) -> None:
        """Revocations from the coordinator: believed only once verified (see RevocationStore)."""
        self.revocations.add(revocations, self.clock())

    def on_checkpoint(self, envelope: SignedEnvelope) -> list[WitnessReport]:
        """The coordinator's newest audit checkpoint: witness it (see CheckpointWitness)."""
        return self.witness.receive(envelope)

    def offer(self, accepted: Accepted) -> None:
        log.info(
            "agent_announcement_accepted",
            sequence=accepted.announcement.sequence,
            path=accepted.announcement.store_path,
            action=accepted.announcement.action.value,
        )
        self._next = accepted
        self._mail.set()
        if self._attempt is not None and not self.updater.activating:
            self._attempt.cancel()  # a download of an older announcement: superseded

    # -- work side ----------------------------------------------------------------------

    @property
    def activating(self) -> bool:
        return self.updater.activating

    async def finish_activation(self) -> None:
        """For an orderly shutdown: an activation is never interrupted by the agent itself.

        Returns at once unless an activation is running; then when its attempt has ended.
        """
        if self.updater.activating:
            log.info("agent_shutdown_deferred", reason="activation in progress")
            await self._idle.wait()

    async def run(self) -> None:
        """The worker loop: recover from a restart, then take announcements as they come."""
        self._idle.clear()
        try:
            await self.updater.recover()
        finally:
            self._idle.set()
        job = self.updater.pending()
        if job is not None:
            log.info("agent_resuming", sequence=job.announcement.sequence)
        while True:
            if job is None:
                job = await self._take()
            job = await self._work(job)

    async def _take(self) -> Accepted:
        while self._next is None:
            self._mail.clear()
            await self._mail.wait()
        job, self._next = self._next, None
        self._mail.clear()
        return job

    async def _work(self, job: Accepted) -> Accepted | None:
        """Run `job`, retrying failed downloads; return a newer job if one superseded it."""
        attempt = 0
        while True:
            if job.announcement.valid_until < self.clock():
                log.warning("agent_announcement_expired", sequence=job.announcement.sequence)
                self.updater.expire(job)
                return None
            try:
                finished = await self._run_attempt(job)
            except DownloadError:
                delay = self.retry.delay(attempt)
                attempt += 1
                log.info("agent_download_retry", sequence=job.announcement.sequence, delay=delay)
                if await self._mail_within(delay):
                    return await self._take()
                continue
            if not finished:
                return await self._take()
            return None

    async def _run_attempt(self, job: Accepted) -> bool:
        """One attempt; False if it was cancelled because a newer announcement arrived."""
        task: asyncio.Task[object] = asyncio.create_task(self.updater.apply(job))
        self._attempt = task
        self._idle.clear()
        try:
            await asyncio.wait({task})
        finally:
            self._attempt = None
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self._idle.set()
        if task.cancelled():
            return False
        task.result()  # DownloadError propagates
        return True

    async def _mail_within(self, seconds: float) -> bool:
        if self._next is not None:
            return True
        try:
            async with asyncio.timeout(seconds):
                await self._mail.wait()
        except TimeoutError:
            return self._next is not None
        return self._next is not None
