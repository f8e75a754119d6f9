"""What an operator (or the runner's auto-pause) may do to a job, and what it becomes.

Each action runs in one transaction with the job row locked (`Dao.control_job`, which reads the
job's `JobState` and writes the `Decision`); the decisions themselves are the pure functions
below. An action not allowed in the job's current status raises `Conflict` (the API's 409) and
changes nothing.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from mailjobs.states import ACTIVE_JOB_STATUSES, FINAL_JOB_STATUSES, JobAction, JobStatus, PausedBy

if TYPE_CHECKING:
    from mailjobs.dao_mysql import Dao


@dataclass(frozen=True)
class JobState:
    """The locked job as an action sees it (queries.sql lock_job)."""
    status: str
    started: bool            # it has sent (started_at is set)
    future_send_at: bool     # its send_at is still ahead
    paused_by: str | None
    sender: str
    # retry only: the recipients the filter re-queued, and when retention erased the
    # recipients' variables (None: never)
    matched: int = 0
    erased_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """What an action makes of a job."""
    status: str
    paused_by: str | None    # who paused it (paused jobs only)
    reason: str | None       # the status reason shown
    finished: bool           # it is final now: finished_at set, job.completed written


# A decision of one action over the locked job's state
Decide = Callable[[JobState], Decision]


class Conflict(Exception):
    """The action is not allowed in the job's current status."""


def _not_final(action: str, status: str) -> None:
    if status in FINAL_JOB_STATUSES:
        raise Conflict(f"job is {status}: it cannot be {action}")


def _unpaused(started: bool, future_send_at: bool) -> JobStatus:
    if future_send_at:
        return JobStatus.SCHEDULED
    return JobStatus.RUNNING if started else JobStatus.QUEUED


def decide_cancel(state: JobState, who: str = "API") -> Decision:
    _not_final("cancelled", state.status)
    return Decision(JobStatus.CANCELLED, None, f"cancelled by {who}", True)


def decide_pause(state: JobState, paused_by: str = PausedBy.OPERATOR,
                 reason: str | None = None) -> Decision:
    if state.status == JobStatus.PAUSED:
        raise Conflict("job is paused already")
    if state.status not in ACTIVE_JOB_STATUSES:
        raise Conflict(f"job is {state.status}: only queued, scheduled or running jobs can be "
                       "paused")
    return Decision(JobStatus.PAUSED, paused_by, reason or f"paused by {paused_by}", False)


def decide_resume(state: JobState) -> Decision:
    if state.status != JobStatus.PAUSED:
        raise Conflict(f"job is {state.status}: only paused jobs can be resumed")
    return Decision(_unpaused(state.started, state.future_send_at), None, None, False)


def decide_retry(state: JobState, statuses: Sequence[str], codes: Sequence[str]) -> Decision:
    """After the matching recipients were re-queued (`state.matched` of them)."""
    if state.erased_at is not None:
        raise Conflict(f"job is {state.status} and its recipients' variables were erased on "
                       f"{state.erased_at:%Y-%m-%d} (RETENTION_DAYS): it cannot be retried; "
                       "post a new job")
    if state.matched == 0:
        raise Conflict("no recipient of this job matches the filter "
                       f"(status in {list(statuses)}"
                       + (f", error_code in {list(codes)})" if codes else ")"))
    if state.status == JobStatus.PAUSED:   # stays paused until resumed
        return Decision(JobStatus.PAUSED, state.paused_by, None, False)
    return Decision(_unpaused(True, state.future_send_at), None, None, False)


def cancel(dao: Dao, job_id: int, who: str = "API") -> int:
    """No further sends; unsent recipients become cancelled. Returns how many."""
    return dao.control_job(job_id, JobAction.CANCEL, lambda state: decide_cancel(state, who))


def pause(dao: Dao, job_id: int, paused_by: str = PausedBy.OPERATOR,
          reason: str | None = None) -> None:
    dao.control_job(job_id, JobAction.PAUSE,
                    lambda state: decide_pause(state, paused_by, reason))


def auto_pause(dao: Dao, job_id: int, paused_by: str, reason: str) -> bool:
    """The runner's pause: False when the job is no longer active (nothing to do)."""
    try:
        pause(dao, job_id, paused_by, reason)
        return True
    except Conflict:
        return False


def resume(dao: Dao, job_id: int) -> None:
    dao.control_job(job_id, JobAction.RESUME, decide_resume)


def retry(dao: Dao, job_id: int, statuses: Sequence[str], codes: Sequence[str]) -> int:
    """Put matching recipients back to queued and the job back to work. Returns how many."""
    return dao.control_job(job_id, JobAction.RETRY,
                           lambda state: decide_retry(state, statuses, codes), statuses, codes)
