"""Every status, outcome and action as an enum, and the sets of statuses the code and the SQL
ask about, each defined once here.

The enums are `StrEnum`s (a `str` subclass whose `str()` and format are the value): a member
equals, hashes and is stored as its string, so the statuses read from the database compare
with them directly. queries.sql lists some of these sets in its statements;
tests/test_states.py checks that every such list is one of the sets below.
"""
from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum, StrEnum
from typing import TypeVar

E = TypeVar("E", bound=StrEnum)


class JobStatus(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"       # waits for its send_at
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RecipientStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"           # claimed by a runner (its lease)
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"         # may have been sent: held for an operator
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    BOUNCED = "bounced"           # sent, then bounced (Gmail took it)
    SUPPRESSED = "suppressed"


class SendResult(StrEnum):
    """What the runner does with a recipient after one send attempt (email_scheduler)."""
    SENT = "sent"
    FAILED = "failed"
    RETRY = "retry"
    HOLD = "hold"                 # held in doubt: status in_doubt
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"     # suppressed after the job was stored (decided at claim)


class SenderAction(StrEnum):
    """What one send's outcome does to its sender."""
    PAUSE_AUTH = "pause_auth"     # its credentials were revoked
    PAUSE_CONFIG = "pause_config"  # Gmail refuses it by policy
    DEFER = "defer"               # its daily limit: no sends until later


class ErrorKind(StrEnum):
    """What a failed send means (transports.base.SendError.kind; email_scheduler.classify)."""
    PERMANENT = "permanent"          # fail this recipient
    TRANSIENT = "transient"          # retry later; certainly not sent
    IN_DOUBT = "in_doubt"            # may have been sent: look it up before sending again
    RATE = "rate"                    # a per-minute rate limit
    DAILY_LIMIT = "daily_limit"      # the sender's daily limit: defer the sender
    SENDER_AUTH = "sender_auth"      # the sender's grant is revoked or invalid: pause it
    SENDER_CONFIG = "sender_config"  # the sender's account cannot send: pause it


class PausedBy(StrEnum):
    """Who paused a job (jobs.paused_by)."""
    OPERATOR = "operator"
    ERROR_RATE = "error_rate"        # the runner's auto-pause (error_rate.py)
    SENDER_AUTH = "sender_auth"      # its sender's credentials were revoked
    SENDER_CONFIG = "sender_config"  # its sender's account cannot send


class SenderAuthState(StrEnum):
    """A sender's credentials (senders.auth_state)."""
    OK = "ok"
    AUTH_REVOKED = "auth_revoked"
    CONFIG_ERROR = "config_error"


class JobAction(StrEnum):
    """What an operator (or the runner's auto-pause) may do to a job (job_control)."""
    CANCEL = "cancel"
    PAUSE = "pause"
    RESUME = "resume"
    RETRY = "retry"


class RunnerState(StrEnum):
    """A runner's state, in its heartbeat row."""
    STARTING = "starting"
    BUSY = "busy"
    IDLE = "idle"
    DB_BACKOFF = "db_backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Deferral(IntEnum):
    """How a retry counts towards MAX_DEFER (recipients.deferred_since; queries.sql
    record_retry)."""
    ATTEMPT = 0       # an attempt: the deferral clock is cleared
    NOT_TRIED = 1     # not tried (refunded): the clock is kept
    REFUSED = 2       # refused before it left: the clock starts, if it had not


J, R = JobStatus, RecipientStatus

# --- job statuses -------------------------------------------------------------------------
# A job that changes no more (only an operator's retry re-opens one)
FINAL_JOB_STATUSES = frozenset({J.COMPLETED, J.COMPLETED_WITH_ERRORS, J.FAILED, J.CANCELLED})
OPEN_JOB_STATUSES = frozenset(JobStatus) - FINAL_JOB_STATUSES
# Not paused and not final: a job that goes on without anyone acting
ACTIVE_JOB_STATUSES = OPEN_JOB_STATUSES - {J.PAUSED}
# A job whose recipients may be claimed now (a scheduled one too, once its send_at is due)
SENDABLE_JOB_STATUSES = frozenset({J.QUEUED, J.RUNNING})
# A job no runner has started yet
NOT_STARTED_JOB_STATUSES = frozenset({J.QUEUED, J.SCHEDULED})

# --- recipient statuses -------------------------------------------------------------------
# Recipients no runner will send to again on its own (in_doubt waits for an operator's retry)
FINAL_RECIPIENT_STATUSES = frozenset({R.SENT, R.FAILED, R.IN_DOUBT, R.CANCELLED, R.EXPIRED,
                                      R.BOUNCED, R.SUPPRESSED})
# Still to be sent, or being sent: a job is finished when none of its recipients is open
OPEN_RECIPIENT_STATUSES = frozenset(RecipientStatus) - FINAL_RECIPIENT_STATUSES
# What a claim may take (a 'sending' one only once its lease ran out)
SENDABLE_RECIPIENT_STATUSES = OPEN_RECIPIENT_STATUSES
# Unsent and in no runner's hands: what a cancel or an expiry ends
WAITING_RECIPIENT_STATUSES = frozenset({R.QUEUED, R.RETRYING, R.IN_DOUBT})
# In the queue, for the metrics: open, or held in doubt for an operator
QUEUED_RECIPIENT_STATUSES = OPEN_RECIPIENT_STATUSES | {R.IN_DOUBT}
# How a finished job's final recipients count: delivered (a bounce was taken by Gmail first),
# not delivered; the others (cancelled, suppressed) were never meant to go
DELIVERED_RECIPIENT_STATUSES = frozenset({R.SENT, R.BOUNCED})
UNDELIVERED_RECIPIENT_STATUSES = frozenset({R.FAILED, R.IN_DOUBT, R.EXPIRED})
# Those whose error_code an error summary counts
ERROR_RECIPIENT_STATUSES = UNDELIVERED_RECIPIENT_STATUSES | {R.RETRYING, R.BOUNCED}
# What an operator's retry may put back to queued, and what it takes when not told
RETRYABLE_RECIPIENT_STATUSES = (R.FAILED, R.IN_DOUBT, R.CANCELLED)
DEFAULT_RETRY_STATUSES = (R.FAILED, R.IN_DOUBT)

# The final status an outcome writes (SendResult -> RecipientStatus); sent and retry have their
# own statements
FINAL_STATUS_OF = {SendResult.FAILED: R.FAILED, SendResult.HOLD: R.IN_DOUBT,
                   SendResult.EXPIRED: R.EXPIRED, SendResult.SUPPRESSED: R.SUPPRESSED}

del J, R


def in_order(statuses: Iterable[E]) -> list[E]:
    """A set of statuses in their enum's order (a frozenset's order changes between runs)."""
    members = set(statuses)
    if not members:
        return []
    kind = type(next(iter(members)))
    return [m for m in kind if m in members]
