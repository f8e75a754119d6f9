"""Plans before sending: when will a job finish, given its sender's limits and what is queued
for that sender already (issue 18).

The arithmetic of `rate_limit.py` run forwards: the per-minute rate spaces the sends, the
rolling 24-hour cap lets at most `daily_cap` go in any 24 hours. The sender's whole unsent
queue counts (other queued, scheduled and running jobs of the same sender, then this one): runners
interleave the jobs of one sender, so this job is done when that queue is, give or take the
order. What it cannot know: jobs posted later at a higher priority, Gmail's own refusals, paused
jobs being resumed, runners being down. It is a plan, not a promise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mailjobs.enqueue import RequestRejected, dedupe
from mailjobs.rate_limit import Limits
from mailjobs.records import SenderPlan
from mailjobs.states import FINAL_JOB_STATUSES, OPEN_RECIPIENT_STATUSES

DAY = 86_400.0


@dataclass(frozen=True)
class Estimate:
    seconds: float          # from `starts_at` to the last send
    limited_by: str         # "daily_cap", "rate" or "none"


def duration(work: int, limits: Limits, sent_24h: int) -> Estimate:
    """How long `work` sends take under `limits`, `sent_24h` having gone in the last 24 h."""
    rate, cap = limits.rate_per_minute, limits.daily_cap
    rate_seconds = (lambda n: 60.0 * n / rate) if rate > 0 else (lambda n: 0.0)
    by_rate = rate_seconds(work)
    by_cap = 0.0
    room = max(0, cap - sent_24h) if cap > 0 else work
    if cap > 0 and work > room:
        # what the window has room for goes now; every further `cap` waits for the window to
        # pass (conservative: the older sends of the window free their room a little earlier)
        rest = work - room
        days = math.ceil(rest / cap)
        by_cap = days * DAY + rate_seconds(rest - (days - 1) * cap)
    if by_cap > by_rate:
        return Estimate(by_cap, "daily_cap")
    return Estimate(by_rate, "rate" if rate > 0 and work > 0 else "none")


def sender_limits(settings: Any, rate: int | None, cap: int | None) -> Limits:
    """The sender's limits: its `mailjobs senders set` overrides, else the settings."""
    return Limits(settings.sender_rate_per_minute if rate is None else rate,
                  settings.sender_daily_cap if cap is None else cap,
                  settings.sender_burst_seconds)


def plan(dao: Any, settings: Any, sender: str, recipients: int, send_at: datetime | None,
         exclude_job: int | None = None, unlimited: bool = False,
         known: SenderPlan | None = None) -> dict[str, Any]:
    """The `estimate` object of the API: `recipients` more sends of `sender`, after the unsent
    recipients of its other active jobs (all but `exclude_job`), from `send_at` or now.
    `unlimited`: no limits apply (a test key's job). `known`: Dao.sender_plan's answer, read
    already (in the transaction that stored the job)."""
    now = datetime.now(UTC)
    starts_at = max(now, send_at) if send_at is not None else now
    if unlimited:
        limits, ahead, sent_24h = Limits(0, 0, 0.0), 0, 0
    else:
        rate, cap, ahead, sent_24h = known or dao.sender_plan(sender, exclude_job or 0)
        limits = sender_limits(settings, rate, cap)
    est = duration(ahead + recipients, limits, sent_24h)
    return {
        "finishes_at": _iso(starts_at + timedelta(seconds=est.seconds)),
        "limited_by": est.limited_by,
        "seconds": round(est.seconds),
        "days": round(est.seconds / DAY, 2),
        "recipients": recipients,
        "queued_ahead": ahead,
        "rate_per_minute": limits.rate_per_minute,
        "daily_cap": limits.daily_cap,
        "sent_24h": sent_24h,
        "starts_at": _iso(starts_at),
    }


def warning(estimate: dict[str, Any], sender: str, warn_days: float) -> str | None:
    """The `warnings` entry of a job that needs more than WARN_DAYS, or None."""
    if warn_days <= 0 or estimate["seconds"] <= warn_days * DAY:
        return None
    why = (f"the daily cap of {estimate['daily_cap']} sends per 24 h"
           if estimate["limited_by"] == "daily_cap"
           else f"the rate of {estimate['rate_per_minute']} sends a minute")
    ahead = (f" after {estimate['queued_ahead']} recipient(s) already queued for it"
             if estimate["queued_ahead"] else "")
    return (f"this job needs about {estimate['days']:g} days: {sender} is limited to {why}"
            f"{ahead}; it should finish around {estimate['finishes_at']} (more than WARN_DAYS "
            f"= {warn_days:g})")


def for_job(dao: Any, settings: Any, job: Any, suppressed: int | None = None,
            unlimited: bool = False,
            known: SenderPlan | None = None) -> dict[str, Any] | None:
    """The estimate of a stored job (None once it is finished): its unsent recipients (from
    its counts; right after storing, its total less the `suppressed` ones)."""
    if job.status in FINAL_JOB_STATUSES:
        return None
    if suppressed is not None:
        left = job.total - suppressed
    else:
        left = sum(job.counts.get(s, 0) for s in OPEN_RECIPIENT_STATUSES)
    return plan(dao, settings, job.sender_email, left, job.send_at, exclude_job=job.id,
                unlimited=unlimited, known=known)


def check_max_duration(dao: Any, settings: Any, req: Any, unlimited: bool = False,
                       total: int | None = None) -> None:
    """Before anything is stored: refuse (400 cannot_finish_in_time, field max_duration) a
    request whose de-duplicated recipients cannot all be sent within `max_duration`. Suppressed
    addresses are only known when storing: they count here (the check errs on refusing)."""
    if req.max_duration is None:
        return
    estimate = plan(dao, settings, req.sender_email, len(dedupe(req)) if total is None else total,
                    req.send_at,
                    unlimited=unlimited)
    allowed = req.max_duration.total_seconds()
    if estimate["seconds"] > allowed:
        raise RequestRejected(
            400, "cannot_finish_in_time",
            f"this job needs about {_span(estimate['seconds'])} ({estimate['limited_by']}: "
            f"{req.sender_email} sends {estimate['rate_per_minute']}/min, at most "
            f"{estimate['daily_cap']} per 24 h, {estimate['queued_ahead']} recipient(s) queued "
            f"ahead), more than max_duration ({_span(allowed)}); nothing was stored",
            [("max_duration", f"the estimate is {estimate['finishes_at']}, "
                              f"{_span(estimate['seconds'])} from the start")])


def _span(seconds: float) -> str:
    if seconds >= DAY:
        return f"{seconds / DAY:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
