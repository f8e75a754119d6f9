"""What an operator (or the runner's auto-pause) may do to a job, and what it becomes.

Each action runs in one transaction with the job row locked (`Dao.control_job`); an action not
allowed in the job's current status raises `Conflict` (the API's 409) and changes nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mailjobs.dao_mysql import Dao
from mailjobs.states import ACTIVE_JOB_STATUSES, FINAL_JOB_STATUSES, JobAction, JobStatus, PausedBy

# What an action makes of a job: its new status, who paused it, the reason shown, and whether
# its unsent recipients are cancelled.
Decision = tuple[str, str | None, str | None, bool]


class Conflict(Exception):
    """The action is not allowed in the job's current status."""


def _not_final(action: str, status: str) -> None:
    if status in FINAL_JOB_STATUSES:
        raise Conflict(f"job is {status}: it cannot be {action}")


def _unpaused(started: bool, future_send_at: bool) -> JobStatus:
    if future_send_at:
        return JobStatus.SCHEDULED
    return JobStatus.RUNNING if started else JobStatus.QUEUED


def cancel(dao: Dao, job_id: int, who: str = "API") -> int:
    """No further sends; unsent recipients become cancelled. Returns how many."""
    def decide(status: str, started: bool, future: bool, paused_by: str | None,
               sender: str) -> Decision:
        _not_final("cancelled", status)
        return JobStatus.CANCELLED, None, f"cancelled by {who}", True
    return dao.control_job(job_id, JobAction.CANCEL, decide)


def pause(dao: Dao, job_id: int, paused_by: str = PausedBy.OPERATOR,
          reason: str | None = None) -> None:
    def decide(status: str, started: bool, future: bool, was_paused_by: str | None,
               sender: str) -> Decision:
        if status == JobStatus.PAUSED:
            raise Conflict("job is paused already")
        if status not in ACTIVE_JOB_STATUSES:
            raise Conflict(f"job is {status}: only queued, scheduled or running jobs can be paused")
        return JobStatus.PAUSED, paused_by, reason or f"paused by {paused_by}", False
    dao.control_job(job_id, JobAction.PAUSE, decide)


def auto_pause(dao: Dao, job_id: int, paused_by: str, reason: str) -> bool:
    """The runner's pause: False when the job is no longer active (nothing to do)."""
    try:
        pause(dao, job_id, paused_by, reason)
        return True
    except Conflict:
        return False


def resume(dao: Dao, job_id: int) -> None:
    def decide(status: str, started: bool, future: bool, paused_by: str | None,
               sender: str) -> Decision:
        if status != JobStatus.PAUSED:
            raise Conflict(f"job is {status}: only paused jobs can be resumed")
        return _unpaused(started, future), None, None, False
    dao.control_job(job_id, JobAction.RESUME, decide)


def retry(dao: Dao, job_id: int, statuses: Sequence[str], codes: Sequence[str]) -> int:
    """Put matching recipients back to queued and the job back to work. Returns how many."""
    def decide(status: str, started: bool, future: bool, paused_by: str | None, sender: str,
               matched: int, erased_at: datetime | None = None) -> Decision:
        if erased_at is not None:
            raise Conflict(f"job is {status} and its recipients' variables were erased on "
                           f"{erased_at:%Y-%m-%d} (RETENTION_DAYS): it cannot be retried; post "
                           "a new job")
        if matched == 0:
            raise Conflict("no recipient of this job matches the filter "
                           f"(status in {list(statuses)}"
                           + (f", error_code in {list(codes)})" if codes else ")"))
        if status == JobStatus.PAUSED:
            return JobStatus.PAUSED, paused_by, None, False  # stays paused until resumed
        return _unpaused(True, future), None, None, False
    return dao.control_job(job_id, JobAction.RETRY, decide, statuses, codes)
