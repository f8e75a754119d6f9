"""What a job becomes once none of its recipients is left to send: its final status and the
reason shown with it, from its recipients' counts by status (the store writes it,
`Dao.finish_job_if_done`)."""
from __future__ import annotations

from collections.abc import Mapping

from mailjobs.states import (
    DELIVERED_RECIPIENT_STATUSES,
    UNDELIVERED_RECIPIENT_STATUSES,
    JobStatus,
    RecipientStatus,
)

# Named in the reason when some recipients were not delivered
_NAMED_IN_REASON = (RecipientStatus.IN_DOUBT, RecipientStatus.EXPIRED)


def final_status(counts: Mapping[str, int]) -> tuple[JobStatus, str | None]:
    """completed when every recipient meant to go was delivered (cancelled and suppressed ones
    were not meant to), failed when none was, else completed_with_errors; the reason says how
    many were not delivered (None when all were)."""
    sent = sum(counts.get(s, 0) for s in DELIVERED_RECIPIENT_STATUSES)
    failed = sum(counts.get(s, 0) for s in UNDELIVERED_RECIPIENT_STATUSES)
    if failed == 0:
        return JobStatus.COMPLETED, None
    status = JobStatus.FAILED if sent == 0 else JobStatus.COMPLETED_WITH_ERRORS
    reason = f"{failed} of {sent + failed} recipients not sent" + "".join(
        f", {counts[k]} {k.replace('_', ' ')}" for k in _NAMED_IN_REASON if counts.get(k))
    return status, reason
