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
