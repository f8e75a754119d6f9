"""Scenario 3: for a while the fake Gmail answers 429 (rate limit) to 30 % of sends and 500 to
10 %.

Everything ends sent, once; each recipient's `attempts` is exactly the number of sends Gmail
saw for it that were not refused for the rate (a 429 is not an attempt: nothing was sent) and
never exceeds MAX_ATTEMPTS; every retry after a 500 was scheduled within its backoff bound
(random(0, min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2^(attempt-1)))) and every retry after a
429 between half of RETRY_BASE_DELAY and RETRY_MAX_DELAY: in the runners' decisions, in
`next_attempt_at` as stored, and in the gaps between the sends Gmail saw.
"""
from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict

from faults_tools import (
    assert_exactly_once,
    check_counts,
    duration,
    post_job,
    report,
    size,
    wait_final,
)

WORKERS = 3
MAX_ATTEMPTS = 12      # 0.4^12: no recipient should run out of attempts in the storm
RETRY_LINE = re.compile(r"retry (\S+) in ([\d.]+) s: .* \[(\w+)\] recipient=(\d+) attempt=(\d+)")


def test_a_storm_of_429_and_500(client, key, dao, fake, fleet):
    n, storm = size(600), duration(15)
    # Backoff proportional to the storm, so a recipient sees about as many storm attempts at
    # any scale: 15 s storm -> base 1 s, cap 4 s.
    base, cap = storm / 15, storm / 3.75
    fake.send_latency = 0.05

    def bound(attempt: int) -> float:
        return min(cap, base * 2 ** max(0, attempt - 1))

    job_id = post_job(client, key, n)
    fake.fail_randomly({429: 0.3, 500: 0.1}, seconds=storm, seed=5,
                       errors={429: ("rateLimitExceeded", "Rate Limit Exceeded")})
    storm_started = time.time()
    started = time.monotonic()
    fleet.start_many(WORKERS, RETRY_BASE_DELAY=base, RETRY_MAX_DELAY=cap,
                     MAX_ATTEMPTS=MAX_ATTEMPTS)

    # Sample the retrying rows while the storm lasts: next_attempt_at is set by the same
    # statement that stamps updated_at, so their difference is the delay the runner chose.
    stored: dict[tuple[int, int], float] = {}
    while time.monotonic() - started < storm:
        for r in dao.recipients_page(job_id, "retrying", 0, 1_000_000):
            delay = (r.next_attempt_at - r.updated_at).total_seconds()
            stored[(r.id, r.attempts)] = delay
            if r.error_code == "gmail_429":   # refused, not attempted: deferred
                assert base / 2 - 0.001 <= delay <= cap + 0.001, (r, delay)
            else:
                assert 0 <= delay <= bound(r.attempts - r.attempts_base) + 0.001, (r, delay)
            assert r.attempts - r.attempts_base < MAX_ATTEMPTS
        time.sleep(0.3)
    status = wait_final(dao, job_id, 60 + cap + n / 10, fleet)
    elapsed = time.monotonic() - started
    assert not fleet.exited(), f"workers exited by themselves: {fleet.exited()}"
    fleet.stop_all_cleanly()

    counts = check_counts(client, key, dao, job_id)
    rows = dao.recipients_page(job_id, None, 0, 1_000_000)
    by_address = {r.to_email: r for r in rows}
    log = defaultdict(list)                            # address -> [(status, time)] at Gmail
    for _, to, st, at in list(fake.send_log):
        if to in by_address:
            log[to].append((st, at))
    failures = sum(1 for sends in log.values() for st, _ in sends if st != 200)
    # What Gmail answered while the storm lasted (the job may outlast it at big scales).
    in_storm = [st for _, _, st, at in list(fake.send_log) if at < storm_started + storm]
    storm_rate = sum(1 for st in in_storm if st != 200) / max(1, len(in_storm))

    # The runners' decisions, from their logs: delay within the bound, full jitter on average.
    decisions, retry_lines = [], fleet.grep("] retry ")
    for line in retry_lines:
        m = RETRY_LINE.search(line)
        assert m, line
        to, delay, code, attempt = m.group(1), float(m.group(2)), m.group(3), int(m.group(5))
        assert code in ("gmail_429", "gmail_5xx"), line
        if code == "gmail_429":           # logged with one decimal
            assert base / 2 - 0.05 <= delay <= cap + 0.05, line
        else:
            assert delay <= bound(attempt) + 0.05, line
            decisions.append(delay / bound(attempt))
    # Gaps between one recipient's sends at Gmail: its backoff plus claim/poll latency.
    slack = 3.0
    late = []
    for a, sends in log.items():
        tried = 0
        for s1, s2 in zip(sends, sends[1:], strict=False):
            tried += s1[0] != 429
            limit = cap if s1[0] == 429 else bound(tried)
            if s2[1] - s1[1] > limit + slack:
                late.append((a, tried, round(s2[1] - s1[1], 2)))
    attempts = [r.attempts for r in rows]
    report("gmail_storm", recipients=n, storm_seconds=round(storm, 1), seconds=round(elapsed, 1),
           status=status, counts=counts, failed_sends=failures,
           sends_during_storm=len(in_storm), failure_rate_during_storm=round(storm_rate, 3),
           attempts_total=sum(attempts), attempts_max=max(attempts),
           attempts_histogram={k: attempts.count(k) for k in sorted(set(attempts))},
           retry_decisions=len(retry_lines), backoff_decisions=len(decisions),
           mean_delay_over_bound=round(statistics.mean(decisions), 3) if decisions else None,
           stored_delays_sampled=len(stored), retries_later_than_bound_plus_slack=len(late),
           recovered_by_check=len(fleet.grep("in-doubt send to")))

    assert status == "completed" and counts == {"sent": n}
    assert_exactly_once(fake, dao, job_id, n)
    assert len(in_storm) > min(n, 200) and 0.3 < storm_rate < 0.5, "the storm hardly happened"
    assert max(attempts) <= MAX_ATTEMPTS
    for r in rows:   # attempts == sends Gmail took up (not 429); the last one accepted
        sends = log[r.to_email]
        assert r.attempts == sum(1 for st, _ in sends if st != 429), (r, sends)
        assert sends[-1][0] == 200 and all(st != 200 for st, _ in sends[:-1]), (r, sends)
    assert len(retry_lines) == failures
    assert 0.35 < statistics.mean(decisions) < 0.65, "delays are not full jitter"
    assert stored, "no retrying row was ever seen"
    assert not late, f"retries much later than their backoff: {late[:10]}"
