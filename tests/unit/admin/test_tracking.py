"""`push --wait` bookkeeping: which status counts for this push, and what is shown."""

from __future__ import annotations

from fleet.admin.tracking import Outcome, PushTracker
from fleet.identity import Identity
from fleet.protocol.messages import AgentState, Progress, Rejection
from tests.admin_standin import desired, device_status

V1 = "/nix/store/" + "a" * 32 + "-system-1"
V2 = "/nix/store/" + "b" * 32 + "-system-2"

A, B, OTHER = (Identity.generate().node_id for _ in range(3))


def _tracker() -> PushTracker:
    return PushTracker(7, [A, B], {A: "a", B: "b"})


def test_applied_of_an_older_push_does_not_count() -> None:
    t = _tracker()
    lines = t.observe(
        device_status(A, "a", state=AgentState.APPLIED, sequence=6, desired=desired(V2, 7))
    )
    assert lines == ["a: waiting for the device to start"]
    assert t.tracks[A].outcome is Outcome.PENDING
    assert t.observe(device_status(A, "a", state=AgentState.APPLIED, sequence=7)) == ["a: applied"]
    assert t.tracks[A].outcome is Outcome.APPLIED
    assert not t.finished


def test_failed_of_an_older_push_does_not_fail_this_one() -> None:
    t = _tracker()
    t.observe(device_status(A, "a", state=AgentState.FAILED, sequence=6, error="old"))
    assert t.tracks[A].outcome is Outcome.PENDING


def test_every_device_done_finishes_and_a_newer_push_counts() -> None:
    t = _tracker()
    t.observe(device_status(A, "a", state=AgentState.APPLIED, sequence=7))
    t.observe(device_status(B, "b", state=AgentState.APPLIED, sequence=9))
    assert t.finished
    assert t.succeeded
    assert t.failures() == []


def test_failures_carry_the_device_error() -> None:
    t = _tracker()
    lines = t.observe(
        device_status(A, "a", state=AgentState.ROLLED_BACK, sequence=7, error="exit 1: boom")
    )
    assert lines == ["a: rolled-back: exit 1: boom"]
    t.observe(device_status(B, "b", state=AgentState.FAILED, sequence=7, error=None))
    assert t.finished
    assert not t.succeeded
    assert [(f.label, f.outcome, f.reason) for f in t.failures()] == [
        ("a", Outcome.ROLLED_BACK, "exit 1: boom"),
        ("b", Outcome.FAILED, "no reason given"),
    ]


def test_a_line_per_state_change_and_per_tenth_of_download() -> None:
    t = _tracker()

    def dl(done: int) -> list[str]:
        progress = Progress(paths_done=1, paths_total=2, bytes_done=done, bytes_total=100 << 20)
        return t.observe(
            device_status(A, "a", state=AgentState.DOWNLOADING, sequence=7, progress=progress)
        )

    assert dl(0) == ["a: downloading 1/2 paths, 0.0/100.0 MiB"]
    assert dl(1 << 20) == []  # same tenth: no new line
    assert dl(55 << 20) == ["a: downloading 1/2 paths, 55.0/100.0 MiB"]
    assert t.observe(device_status(A, "a", state=AgentState.ACTIVATING, sequence=7)) == [
        "a: activating"
    ]
    assert t.observe(device_status(A, "a", state=AgentState.ACTIVATING, sequence=7)) == []


def test_other_devices_and_finished_ones_are_ignored() -> None:
    t = _tracker()
    assert t.observe(device_status(OTHER, "x", state=AgentState.FAILED, sequence=7)) == []
    t.observe(device_status(A, "a", state=AgentState.APPLIED, sequence=7))
    assert t.observe(device_status(A, "a", state=AgentState.FAILED, sequence=8)) == []
    assert t.tracks[A].outcome is Outcome.APPLIED


def test_expiry_says_why_each_device_is_not_done() -> None:
    t = PushTracker(7, [A, B, OTHER], {A: "a", B: "b"})
    assert t.observe(device_status(A, "a", online=False, sequence=6)) == [
        "a: offline; it gets the push when it connects"
    ]
    t.observe(device_status(B, "b", state=AgentState.DOWNLOADING, sequence=7))
    t.expire()
    assert t.finished
    assert not t.succeeded
    assert t.summary() == [
        "a: timed-out: offline; it gets the push when it connects",
        "b: timed-out: still downloading",
        f"{OTHER.short()}: timed-out: no status from the coordinator",
    ]


def _refused(sequence: int, code: str = "scope", reason: str = "not in scope") -> Rejection:
    return Rejection(sequence=sequence, code=code, reason=reason, time=1_700_000_000.0)


def test_a_rejection_of_this_push_ends_the_wait_for_that_device_at_once() -> None:
    t = _tracker()
    lines = t.observe(
        device_status(A, "a", state=AgentState.APPLIED, sequence=6, rejection=_refused(7))
    )
    assert lines == ["a: rejected: not in scope"]
    assert t.tracks[A].outcome is Outcome.REJECTED
    t.observe(device_status(B, "b", state=AgentState.APPLIED, sequence=7))
    assert t.finished
    assert not t.succeeded
    assert [(f.label, f.outcome, f.reason) for f in t.failures()] == [
        ("a", Outcome.REJECTED, "not in scope")
    ]


def test_a_rejection_of_another_push_does_not_count() -> None:
    t = _tracker()
    t.observe(device_status(A, "a", state=AgentState.IDLE, sequence=5, rejection=_refused(6)))
    assert t.tracks[A].outcome is Outcome.PENDING


def test_a_scope_rejection_with_mismatched_tags_says_which_tags_the_agent_has() -> None:
    t = _tracker()
    status = device_status(
        A, "a", tags=("kiosk",), agent_tags=("lobby",), sequence=6, rejection=_refused(7)
    )
    assert t.observe(status) == [
        "a: rejected: not in scope (the agent's own tags are lobby, the registry's kiosk)"
    ]
