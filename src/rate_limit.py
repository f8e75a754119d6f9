"""Per-sender limits shared by every runner: a token bucket for the per-minute rate and a
rolling 24-hour cap. The state lives in the `senders` row (locked FOR UPDATE during a claim),
so four runners on four hosts together stay under the limit; this module is the arithmetic."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    rate_per_minute: int  # 0: unlimited
    daily_cap: int        # 0: unlimited
    burst_seconds: float


@dataclass(frozen=True)
class Allowance:
    count: int            # recipients that may be claimed now
    tokens_left: float    # bucket after taking them
    reason: str | None    # why fewer than wanted, for logs


def allowance(limits: Limits, wanted: int, tokens: float, elapsed: float | None,
              sent_last_24h: int) -> Allowance:
    """How many sends may start now, and the bucket afterwards."""
    count, reason = wanted, None
    left = tokens
    if limits.rate_per_minute > 0:
        per_second = limits.rate_per_minute / 60.0
        capacity = max(1.0, per_second * limits.burst_seconds)
        left = min(capacity, tokens + per_second * max(0.0, elapsed or 0.0))
        if int(left) < count:
            count, reason = int(left), f"rate limit {limits.rate_per_minute}/min"
    if limits.daily_cap > 0:
        remaining = max(0, limits.daily_cap - sent_last_24h)
        if remaining < count:
            count, reason = remaining, f"daily cap {limits.daily_cap}/24h reached"
    if limits.rate_per_minute > 0:
        left -= count
    return Allowance(max(0, count), left, reason)


# Why a claim of a deferred sender's job took nothing (the reason a claim returns)
DEFERRED = "sender deferred"


@dataclass(frozen=True)
class SenderState:
    """The sender's row as a claim locks it (queries.sql lock_sender)."""
    rate_per_minute: int | None   # its own rate; None: the settings'
    daily_cap: int | None         # its own cap; None: the settings'
    tokens: float                 # the bucket when it was last counted
    elapsed: float | None         # seconds since then (None: never counted)
    deferred: bool                # paused_until is still ahead (a refusal deferred it)


def claim_limits(limits: Limits, sender: SenderState, unlimited: bool = False) -> Limits | None:
    """The limits one claim works under: the sender's own rate and cap where it has them, else
    `limits` (the settings'); None while the sender is deferred (nothing may be claimed).
    `unlimited` (a test key's job: its messages never reach the sender's account): no limit and
    no deferral."""
    if unlimited:
        return Limits(0, 0, limits.burst_seconds)
    if sender.deferred:
        return None
    return Limits(limits.rate_per_minute if sender.rate_per_minute is None
                  else int(sender.rate_per_minute),
                  limits.daily_cap if sender.daily_cap is None else int(sender.daily_cap),
                  limits.burst_seconds)


def tokens_after_claim(allowed: Allowance, taken: int) -> float:
    """The bucket to store after a claim that took `taken` of the `allowed.count` it was
    allowed: the ones it did not take (claimed elsewhere meanwhile, or none due) go back."""
    return allowed.tokens_left + (allowed.count - taken)
