"""Rows that cross layers (DAO -> API/runner), as dataclasses rather than bare tuples."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mailjobs.states import FINAL_JOB_STATUSES as FINAL_JOB_STATUSES  # re-exported
from mailjobs.states import FINAL_RECIPIENT_STATUSES as FINAL_RECIPIENT_STATUSES
from mailjobs.states import Deferral, JobStatus, RecipientStatus

# Every status, as plain strings in their order (choices, documentation); the sets are in
# states.py
JOB_STATUSES = tuple(s.value for s in JobStatus)
RECIPIENT_STATUSES = tuple(s.value for s in RecipientStatus)
# Why an address is on an API key's suppression list.
SUPPRESSION_REASONS = ("unsubscribed", "hard_bounce", "complaint", "manual")
# Characters of an error message (or a bounce's detail) kept in its TEXT column (64 KiB)
ERROR_TEXT_MAX = 65000


def clip_error(text: str | None) -> str:
    """An error message as it is stored: at most ERROR_TEXT_MAX characters, "" for none."""
    return (text or "")[:ERROR_TEXT_MAX]


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    prefix: str
    secret_hash: str
    allowed_senders: list[str]
    is_operator: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    max_priority: int = 2
    # A test key (issue 18): None for a real key; "outbox" or "null", where its jobs' messages
    # go instead of MAIL_TRANSPORT.
    test_mode: str | None = None

    @property
    def is_test(self) -> bool:
        return self.test_mode is not None

    def may_send_as(self, sender_email: str) -> bool:
        """Patterns are exact addresses, `*@domain` or `*`; comparison ignores case."""
        sender = sender_email.lower()
        for pattern in self.allowed_senders:
            pattern = pattern.lower()
            if pattern == "*" or pattern == sender:
                return True
            if pattern.startswith("*@") and sender.endswith(pattern[1:]) \
                    and sender.count("@") == 1:
                return True
        return False


@dataclass(frozen=True)
class NewJob:
    api_key_id: int
    sender_email: str
    from_name: str | None
    reply_to: str | None
    subject_template: str
    html_template: str | None
    text_template: str | None
    variables: dict[str, Any]
    total: int
    duplicates_removed: int
    idempotency_key: str | None
    request_hash: str | None
    send_at: datetime | None = None
    template_name: str | None = None
    template_version: int | None = None
    priority: int = 1
    expires_at: datetime | None = None
    unsubscribe_base_url: str | None = None   # List-Unsubscribe links to <this>/u/<token>
    metadata: dict[str, Any] | None = None    # the client's own, returned in webhook events
    # The template's versions by language tag: {tag: {subject, html, text, from_name}}
    template_variants: dict[str, dict[str, Any]] | None = None
    # the job's own attachments (attachments.jobs) and every attachment row id the
    # job uses (its own and its recipients'): job_attachments
    attachments: list[dict[str, Any]] | None = None
    attachment_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class StoredTemplate:
    name: str
    version: int
    subject: str
    html: str | None
    text: str | None
    created_at: datetime
    variants: dict[str, dict[str, Any]] | None = None   # by language tag, as NewJob's


@dataclass(frozen=True)
class NewRecipient:
    to_email: str
    name: str | None
    variables: dict[str, Any] | None
    locale: str | None = None        # the language asked for (its own, else the job's)
    locale_used: str | None = None   # the template variant chosen for it; None: the default
    metadata: dict[str, Any] | None = None     # the client's own, returned in listings and events
    # the recipient's own attachments, stored as JSON (attachments.jobs)
    attachments: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Job:
    id: int
    type: str
    api_key_id: int
    sender_email: str
    from_name: str | None
    reply_to: str | None
    subject_template: str
    html_template: str | None
    text_template: str | None
    variables: dict[str, Any]
    status: str
    status_reason: str | None
    total: int
    duplicates_removed: int
    idempotency_key: str | None
    request_hash: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    send_at: datetime | None = None
    paused_by: str | None = None
    template_name: str | None = None
    template_version: int | None = None
    priority: int = 1
    expires_at: datetime | None = None
    counts: dict[str, int] = field(default_factory=dict)
    unsubscribe_base_url: str | None = None
    template_variants: dict[str, dict[str, Any]] | None = None   # NewJob's
    metadata: dict[str, Any] | None = None    # the client's own (POST), read by job_by_id
    # the job's own attachments (attachments.jobs): [] for none; read by Dao.job only (None:
    # not read)
    attachments: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Recipient:
    id: int
    job_id: int
    to_email: str
    name: str | None
    variables: dict[str, Any] | None
    status: str
    attempts: int
    next_attempt_at: datetime | None
    claimed_by: str | None
    lease_expires_at: datetime | None
    message_id: str | None
    gmail_message_id: str | None
    error_code: str | None
    error: str | None
    sent_at: datetime | None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    in_doubt: bool = False
    attempts_base: int = 0
    deferred_since: datetime | None = None   # refused before it left since then (MAX_DEFER)
    locale: str | None = None        # NewRecipient's
    locale_used: str | None = None
    metadata: dict[str, Any] | None = None   # the client's own; read only for listings
    attachments: list[dict[str, Any]] | None = None   # its own files (attachments.jobs)


@dataclass(frozen=True)
class LearnedCap:
    """A cap lowered after a refusal (learned_limits.py): kind smtp or gmail, target host:port
    or the sender's address."""
    kind: str
    target: str
    cap: int
    configured: int
    reason: str
    lowered_at: datetime
    hold_until: datetime
    successes: int
    updated_at: datetime


@dataclass(frozen=True)
class Suppression:
    id: int
    api_key_id: int
    email: str
    reason: str
    job_id: int | None
    recipient_id: int | None
    detail: str | None
    created_at: datetime


@dataclass(frozen=True)
class Attachment:
    """An uploaded file's row (its bytes are in attachment_chunks)."""
    id: int
    public_id: str
    api_key_id: int
    sha256: bytes
    size: int
    content_type: str
    filename: str | None
    chunks: int
    created_at: datetime
    last_used_at: datetime


# --- what the runner hands the store to write (Dao.record_outcomes, Dao.release) ---------------
@dataclass(frozen=True)
class SentOutcome:
    """A recipient sent: its provider's id for the message."""
    id: int
    provider_id: str | None


@dataclass(frozen=True)
class FinalOutcome:
    """A recipient that ended unsent (failed, in_doubt, expired, suppressed)."""
    id: int
    status: RecipientStatus
    error_code: str
    error: str
    refund: bool = False      # the attempt does not count


@dataclass(frozen=True)
class RetryOutcome:
    """A recipient to try again after `delay` seconds."""
    id: int
    error_code: str
    error: str
    delay: float
    refund: bool = False      # the attempt does not count
    in_doubt: bool = False    # the attempt may have reached the far side
    deferral: Deferral = Deferral.ATTEMPT


# Dao.sender_plan's answer, for estimates.py: the sender's own rate per minute and daily cap
# (None: the settings apply), the unsent recipients of its active jobs, its sends in 24 hours.
SenderPlan = tuple[int | None, int | None, int, int]


@dataclass(frozen=True)
class GiveBack:
    """Claims given back unsent: `released` go back to the queue (attempt refunded) after
    `delay` seconds, `cancelled` (of cancelled jobs) become cancelled; `refunds` are the sends
    charged to each sender's daily count at claim."""
    released: tuple[int, ...] = ()
    cancelled: tuple[int, ...] = ()
    refunds: Mapping[str, int] = field(default_factory=dict)
    delay: float = 0.0
