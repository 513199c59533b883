"""The agent's work side: accept verified announcements and run them one at a time.

`Agent` owns the Updater (procedure + state file), the mailbox of the newest accepted
announcement and the outbox of messages for the coordinator (fleet.agent.outbox, created
first and handed to the Updater). The connection side (session.py) talks to it through one
method and the outbox: it opens each session with the outbox's Hello, hands every message
from the coordinator to `receive()`, sends what it returns, and drains the outbox for what
the agent says on its own (status); `run()` is the worker loop. The two run as sibling tasks, so
the device keeps working while the coordinator is unreachable.

Supersession: a newer announcement cancels a download in progress (or a retry wait), never an
activation: from the end of the download to the final state the procedure runs to its end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from fleet import __version__
from fleet.agent.backoff import Backoff
from fleet.agent.outbox import Outbox
from fleet.agent.revocations import RevocationStore
from fleet.agent.state import StateFile
from fleet.agent.updater import ApplyConfig, DownloadError, Updater, running_system
from fleet.agent.verify import Accepted, AnnouncementRefused, verify_announcement
from fleet.agent.witness import CheckpointWitness
from fleet.capability import SignedRevocation
from fleet.identity import NodeId
from fleet.log import get_logger
from fleet.protocol.messages import (
    AnnouncementRejected,
    AuditCheckpoint,
    Deliver,
    DeliverV1,
    Hello,
    Revocations,
    TargetProof,
    WitnessReport,
)
from fleet.wire import Message, SignedEnvelope

log = get_logger("fleet.agent")


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
        enroll_token: SignedEnvelope | None = None,
        retry: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self.trust_roots = frozenset(trust_roots)
        self.tags = tuple(tags)  # from local configuration: the scope check trusts only these
        self.clock = clock
        self.enroll_token = enroll_token  # Tag.ENROLL_TOKEN: a bearer credential, never logged
        self.revocations = RevocationStore(state.directory, self.trust_roots)
        self.revocations.load(clock())
        self.witness = CheckpointWitness(state.directory, coordinator)  # None: not a witness
        self.witness.load()
        self.retry = retry or Backoff(initial=5.0, maximum=300.0)
        record = state.load()
        self.outbox = Outbox(record.status.report(running_system(config.profile)), self.hello)
        self.updater = Updater(config, state, record, self.outbox.put_status, clock=clock)
        self._next: Accepted | None = None
        self._mail = asyncio.Event()
        self._attempt: asyncio.Task[object] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- connection side ----------------------------------------------------------------

    def receive(self, message: Message) -> list[Message]:
        """A message from the coordinator; returns the replies to send (a rejection, witness
        reports). Status goes to the outbox as it changes."""
        match message:
            case Deliver(announcement=envelope, proof=proof):
                rejected = self.on_deliver(envelope, proof)
                return [rejected] if rejected is not None else []
            case DeliverV1(announcement=envelope):
                rejected = self.on_deliver(envelope, None)
                return [rejected] if rejected is not None else []
            case Revocations(revocations=revocations):
                self.on_revocations(revocations)
                return []
            case AuditCheckpoint(checkpoint=checkpoint):
                return list(self.on_checkpoint(checkpoint))
        log.warning("agent_unexpected_message", type=type(message).__name__)
        return []

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
            enroll_token=self.enroll_token,
        )

    def floor(self) -> int:
        """The highest sequence applied or in progress; anything new must be above it."""
        seqs = [self.updater.procedure.applied_sequence, self.updater.status.sequence or 0]
        if self._next is not None:
            seqs.append(self._next.announcement.sequence)
        return max(seqs)

    def on_deliver(
        self, envelope: SignedEnvelope, proof: TargetProof | None = None
    ) -> AnnouncementRejected | None:
        """Verify a delivered announcement (with this device's target proof, if it came with
        one); queue it, or return the rejection to send."""
        current = self._next.envelope if self._next is not None else self.updater.announcement
        try:
            accepted = verify_announcement(
                envelope,
                trust_roots=self.trust_roots,
                device=self.node_id,
                tags=self.tags,
                revoked=self.revocations.ids(),
                proof=proof,
                floor=self.floor(),
                current=current,
                now=self.clock(),
            )
        except AnnouncementRefused as exc:
            log.warning("agent_announcement_refused", sequence=exc.sequence, reason=exc.reason)
            return AnnouncementRejected(sequence=exc.sequence, code=exc.code, reason=exc.reason)
        if accepted.duplicate:
            log.info("agent_announcement_duplicate", sequence=accepted.announcement.sequence)
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
