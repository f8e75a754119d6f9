"""The order in which a runner offers claims to jobs: priority first, then round-robin between
API keys and between the jobs of a key, rotating the starting point on every pass.

Runners always claim from a higher priority tier first and go down a tier only while they still
have room (the higher tier had nothing due, or its senders were at their limits). Within a tier
every job gets a share of the room each pass, so a 20-recipient job posted behind a
100,000-recipient one starts at the next claim and finishes long before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest

PRIORITIES = {"high": 2, "normal": 1, "low": 0}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}


@dataclass(frozen=True)
class Claimable:
    job_id: int
    sender: str
    priority: int
    api_key_id: int


def interleave_by_key(jobs: list[Claimable]) -> list[Claimable]:
    """key A job 1, key B job 1, key A job 2, ... (jobs of a key stay oldest first)."""
    by_key: dict[int, list[Claimable]] = {}
    for job in jobs:
        by_key.setdefault(job.api_key_id, []).append(job)
    rounds = zip_longest(*by_key.values())
    return [job for one_round in rounds for job in one_round if job is not None]


def tiers(jobs: list[Claimable], rotation: int) -> list[list[Claimable]]:
    """Jobs grouped by priority, highest first; each tier fair-ordered and rotated."""
    out = []
    for priority in sorted({j.priority for j in jobs}, reverse=True):
        tier = interleave_by_key([j for j in jobs if j.priority == priority])
        start = rotation % len(tier)
        out.append(tier[start:] + tier[:start])
    return out


def share(room: int, jobs_in_tier: int, floor: int) -> int:
    """Recipients offered to each job of a tier in one pass."""
    return max(1, floor, room // max(1, jobs_in_tier))
