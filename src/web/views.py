"""JSON views of jobs, recipients, runners and senders: one shape for the API, the CLI and the
dashboard."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from mailjobs.records import Job, Recipient, StoredTemplate
from mailjobs.scheduling import PRIORITY_NAMES
from mailjobs.web.schemas import (
    AddressTraceOut,
    ErrorSummary,
    EstimateOut,
    JobOut,
    RecipientOut,
    SuppressionOut,
    TemplateOut,
    TemplateVariantOut,
    TracedRecipientOut,
    TracedSuppressionOut,
)

T = TypeVar("T")
# A recipient's next_attempt_at means "due then" only in these statuses (for `sending` it is the
# lease's end; a final row's is whatever it last was): null in the others.
DUE_STATUSES = ("queued", "retrying")


def _row_id(row: Any) -> int:
    return int(row.id)


def keyset_page(rows: Sequence[T], limit: int,
                cursor: Callable[[T], int] = _row_id) -> tuple[list[T], int | None]:
    """One page out of `limit + 1` rows fetched: the page, and the cursor of the next page (its
    last row's id) only when another row exists, so the last page says null."""
    if len(rows) > limit:
        return list(rows[:limit]), cursor(rows[limit - 1])
    return list(rows), None


def job_view(job: Job, errors: list[tuple[str, int, str]] | None = None,
             counts: dict[str, int] | None = None,
             estimate: dict[str, Any] | None = None, test: bool = False) -> dict[str, Any]:
    """A job; `counts` when they were read apart from the row (a list's page, one query);
    `estimate` from estimates.plan (single-job answers); `test`: a test key's job."""
    return JobOut(
        id=job.id, type=job.type, status=job.status, status_reason=job.status_reason,
        sender_email=job.sender_email, from_name=job.from_name, reply_to=job.reply_to,
        total=job.total, duplicates_removed=job.duplicates_removed,
        counts=job.counts if counts is None else counts,
        template_name=job.template_name, template_version=job.template_version,
        priority=PRIORITY_NAMES.get(job.priority, str(job.priority)), expires_at=job.expires_at,
        created_at=job.created_at, send_at=job.send_at, started_at=job.started_at,
        finished_at=job.finished_at, updated_at=job.updated_at,
        recipients_url=f"/api/jobs/{job.id}/recipients",
        errors=None if errors is None else [
            ErrorSummary(error_code=c, count=n, example=e) for c, n, e in errors],
        estimate=EstimateOut(**estimate) if estimate is not None else None, test=test,
        metadata=job.metadata,
    ).model_dump(mode="json")


def template_view(t: StoredTemplate) -> dict[str, Any]:
    return TemplateOut(name=t.name, version=t.version, subject=t.subject, html=t.html,
                       text=t.text, created_at=t.created_at,
                       variants=None if t.variants is None else {
                           tag: TemplateVariantOut(**v) for tag, v in t.variants.items()},
                       ).model_dump(mode="json")


def _recipient_fields(r: Recipient) -> dict[str, Any]:
    """The fields of RecipientOut (and of its subclass TracedRecipientOut) from a row."""
    fields = {name: getattr(r, name) for name in RecipientOut.model_fields}
    if r.status not in DUE_STATUSES:
        fields["next_attempt_at"] = None
    return fields


def recipient_view(r: Recipient) -> dict[str, Any]:
    return RecipientOut(**_recipient_fields(r)).model_dump(mode="json")


def trace_view(email: str, fetched: list[tuple[Recipient, str, str, int]], limit: int,
               suppressions: list[Any]) -> dict[str, Any]:
    """GET /api/recipients?email=: an address's recipient rows across jobs and its suppressions
    (`fetched`: up to limit + 1 rows, see keyset_page)."""
    rows, next_before = keyset_page(fetched, limit, lambda row: row[0].id)
    return AddressTraceOut(
        email=email,
        recipients=[TracedRecipientOut(
            **_recipient_fields(r), job_id=r.job_id, job_status=job_status,
            sender_email=sender, created_at=r.created_at)  # type: ignore[arg-type]  # a stored row has it
            for r, job_status, sender, _ in rows],
        next_before=next_before,
        suppressions=[TracedSuppressionOut(
            api_key_id=x.api_key_id, reason=x.reason, job_id=x.job_id,
            recipient_id=x.recipient_id, detail=x.detail, created_at=x.created_at)
            for x in suppressions],
    ).model_dump(mode="json")


def _iso(value: Any) -> Any:
    return value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value


def runner_view(row: dict[str, Any], stale_after: float) -> dict[str, Any]:
    age = (datetime.now(UTC) - row["heartbeat_at"]).total_seconds()
    alive = row["state"] != "stopped" and age <= stale_after
    return {**{k: _iso(v) for k, v in row.items()}, "heartbeat_age_s": round(age, 1),
            "alive": alive}


def sender_view(row: dict[str, Any], sent_24h: int, defaults: tuple[int, int]) -> dict[str, Any]:
    rate, cap = defaults
    return {"email": row["email"], "auth_state": row["auth_state"],
            "auth_error": row["auth_error"], "has_credentials": bool(row["has_credentials"]),
            "rate_per_minute": row["rate_per_minute"] if row["rate_per_minute"] is not None
            else rate,
            "daily_cap": row["daily_cap"] if row["daily_cap"] is not None else cap,
            "sent_24h": sent_24h, "paused_until": _iso(row["paused_until"]),
            "paused_reason": row["paused_reason"]}


def learned_cap_view(c: Any) -> dict[str, Any]:
    """A cap learned from a refusal (records.LearnedCap); `configured` is the runners' setting
    (SMTP_MAX_CONNECTIONS or GMAIL_MAX_CONCURRENT_PER_SENDER) when they last changed it."""
    now = datetime.now(UTC)
    configured = c.configured
    return {"kind": c.kind, "target": c.target, "cap": max(1, min(c.cap, configured)),
            "configured": configured, "lowered": c.cap < configured, "reason": c.reason,
            "lowered_at": _iso(c.lowered_at),
            "hold_until": _iso(c.hold_until) if c.hold_until > now else None,
            "successes": c.successes}


def learned_caps_view(caps: Sequence[Any]) -> list[dict[str, Any]]:
    return [learned_cap_view(c) for c in caps]


def suppression_view(x: Any) -> dict[str, Any]:
    """A suppression list entry (records.Suppression)."""
    return SuppressionOut(id=x.id, email=x.email, reason=x.reason, job_id=x.job_id,
                          recipient_id=x.recipient_id, detail=x.detail,
                          created_at=x.created_at).model_dump(mode="json")
