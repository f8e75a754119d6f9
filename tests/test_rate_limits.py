"""Per-sender limits enforced through the database, so several runners together obey them."""
from __future__ import annotations

import threading
import time

from mailjobs.rate_limit import Limits, SenderState, allowance, claim_limits, tokens_after_claim
from mailjobs.transports.base import SendResult
from runner_helpers import fast, recipients, running, wait_for
from test_api_enqueue import body, post


class RecordingTransport:
    """Records when each message was handed over (shared by every runner's threads)."""
    name = "recording"
    times: list[float] = []
    lock = threading.Lock()

    def send(self, msg):
        with self.lock:
            self.times.append(time.monotonic())
        return SendResult(f"rec-{msg.recipient_id}")

    def find_by_message_id(self, sender, message_id):
        return None

    def close(self):
        pass


def test_bucket_arithmetic():
    limits = Limits(rate_per_minute=60, daily_cap=0, burst_seconds=5)
    full = allowance(limits, wanted=100, tokens=0, elapsed=60, sent_last_24h=0)
    assert (full.count, full.tokens_left) == (5, 0)  # capped at 5 s worth of 1/s
    some = allowance(limits, wanted=100, tokens=0.5, elapsed=1.0, sent_last_24h=0)
    assert (some.count, round(some.tokens_left, 3)) == (1, 0.5)
    capped = allowance(Limits(0, 10, 5), wanted=100, tokens=0, elapsed=None, sent_last_24h=8)
    assert (capped.count, "daily cap" in capped.reason) == (2, True)
    assert allowance(Limits(0, 0, 5), 100, 0, None, 0).count == 100


def test_a_new_senders_bucket_starts_full_so_its_first_mails_go_at_once(client, key, dao):
    job_id = post(client, key, body(5)).json["job_id"]
    limits = Limits(rate_per_minute=60, daily_cap=0, burst_seconds=3)
    rows, reason = dao.claim(job_id, "ops@example.com", "r-1", 5, 30, limits)
    assert len(rows) == 3 and reason == "rate limit 60/min"      # the burst, not nothing
    rows, reason = dao.claim(job_id, "ops@example.com", "r-1", 5, 30, limits)
    assert rows == [] and reason == "rate limit 60/min"          # then 1/s


def test_the_rate_limit_holds_across_two_runners(client, key, dao):
    RecordingTransport.times = []
    job_id = post(client, key, body(12)).json["job_id"]
    s = fast(dao.settings, sender_rate_per_minute=120, sender_burst_seconds=1.0)
    with running(s, dao, count=2, factory=RecordingTransport):
        wait_for(lambda: dao.recipient_counts(job_id).get("sent") == 12, 30, message="12 sends")
    times = sorted(RecordingTransport.times)
    assert len(times) == 12
    # Token bucket of 2/s with room for 2: in any window of w seconds at most 2 + 2w sends.
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            window = times[j] - start
            assert j - i + 1 <= 2 + 2 * window + 1, (i, j, window)
    assert times[-1] - times[0] >= 4.0  # 12 sends at 2/s after a burst of 2 take >= 5 s


def test_the_daily_cap_stops_claims_without_failing_anyone(client, key, dao):
    RecordingTransport.times = []
    job_id = post(client, key, body(8)).json["job_id"]
    s = fast(dao.settings, sender_daily_cap=5)
    with running(s, dao, factory=RecordingTransport):
        wait_for(lambda: dao.recipient_counts(job_id).get("sent") == 5, 20, message="5 sends")
        time.sleep(0.5)  # several more polls: nothing more may be claimed
    assert dao.recipient_counts(job_id) == {"sent": 5, "queued": 3}
    assert len(RecordingTransport.times) == 5
    assert dao.job(job_id).status == "running"
    with dao.transaction() as cur:
        cur.execute("SELECT SUM(sends) FROM sender_hourly_sends WHERE sender_email=%s",
                    ("ops@example.com",))
        assert int(cur.fetchone()[0]) == 5


def test_a_per_sender_override_wins_over_the_default(client, key, dao):
    RecordingTransport.times = []
    dao.set_sender_limits("ops@example.com", None, 2)
    job_id = post(client, key, body(4)).json["job_id"]
    with running(fast(dao.settings, sender_daily_cap=100), dao, factory=RecordingTransport):
        wait_for(lambda: dao.recipient_counts(job_id).get("sent") == 2, 20, message="2 sends")
        time.sleep(0.3)
    assert dao.recipient_counts(job_id) == {"sent": 2, "queued": 2}
    assert {r.attempts for r in recipients(dao, job_id) if r.status == "queued"} == {0}


def test_a_claim_works_under_the_senders_own_limits_where_it_has_them():
    defaults = Limits(rate_per_minute=60, daily_cap=1000, burst_seconds=5)
    own = SenderState(rate_per_minute=10, daily_cap=None, tokens=1.0, elapsed=2.0,
                      deferred=False)
    assert claim_limits(defaults, own) == Limits(10, 1000, 5)
    none_own = SenderState(None, 0, 1.0, None, False)
    assert claim_limits(defaults, none_own) == Limits(60, 0, 5)


def test_a_deferred_sender_gets_nothing_unless_the_job_is_a_test_keys():
    deferred = SenderState(10, 100, 5.0, 1.0, deferred=True)
    assert claim_limits(Limits(60, 0, 5), deferred) is None
    assert claim_limits(Limits(60, 0, 5), deferred, unlimited=True) == Limits(0, 0, 5)


def test_a_claim_gives_back_the_tokens_of_what_it_did_not_take():
    allowed = allowance(Limits(60, 0, 5), wanted=4, tokens=5.0, elapsed=0.0, sent_last_24h=0)
    assert (allowed.count, allowed.tokens_left) == (4, 1.0)
    assert tokens_after_claim(allowed, 4) == 1.0
    assert tokens_after_claim(allowed, 1) == 4.0   # 3 were claimed elsewhere meanwhile
    assert tokens_after_claim(allowed, 0) == 5.0
