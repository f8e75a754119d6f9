"""Priorities, fairness between jobs and keys, per-sender limits not blocking others, expiry."""
from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from mailjobs.scheduling import Claimable, interleave_by_key, share, tiers
from mailjobs.transports.base import SendResult
from runner_helpers import fast, recipients, running, wait_for, wait_job_done
from test_api_enqueue import body, post


class Recorder:
    """Records (time, job, recipient) of every message handed over; a little latency."""
    name = "recorder"
    log: list[tuple[float, int, int]] = []
    lock = threading.Lock()
    latency = 0.002

    def send(self, msg):
        time.sleep(Recorder.latency)
        with Recorder.lock:
            Recorder.log.append((time.monotonic(), msg.job_id, msg.recipient_id))
        return SendResult(f"r-{msg.recipient_id}")

    def find_by_message_id(self, sender, message_id):
        return None

    def close(self):
        pass


def fresh_recorder(latency=0.002):
    Recorder.log = []
    Recorder.latency = latency


def test_order_is_priority_then_round_robin_between_keys():
    jobs = [Claimable(1, "a", 1, 10), Claimable(2, "a", 1, 10), Claimable(3, "b", 1, 20),
            Claimable(4, "c", 2, 30), Claimable(5, "a", 0, 10)]
    assert [j.job_id for j in interleave_by_key(jobs[:3])] == [1, 3, 2]
    assert [[j.job_id for j in t] for t in tiers(jobs, 0)] == [[4], [1, 3, 2], [5]]
    assert [[j.job_id for j in t] for t in tiers(jobs, 1)] == [[4], [3, 2, 1], [5]]
    assert share(100, 4, 4) == 25 and share(3, 10, 1) == 1


def test_a_high_priority_job_is_sent_before_a_large_normal_one(client, key, dao):
    fresh_recorder()
    big = post(client, key, body(150)).json["job_id"]
    urgent = post(client, key, body(5, priority="high")).json["job_id"]
    s = fast(dao.settings, claim_batch=10, runner_concurrency=1)
    with running(s, dao, factory=Recorder):
        assert wait_job_done(dao, urgent) == "completed"
        assert dao.job(big).status == "running"  # still going
    first = [job for _, job, _ in sorted(Recorder.log)[:5]]
    assert first == [urgent] * 5


def test_two_jobs_of_the_same_priority_progress_together(client, key, make_key, dao):
    fresh_recorder()
    other = make_key(senders=["*"])
    a = post(client, key, body(120)).json["job_id"]
    b = post(client, other, body(120)).json["job_id"]
    s = fast(dao.settings, claim_batch=20, runner_concurrency=2)
    with running(s, dao, factory=Recorder):
        wait_job_done(dao, a)
        wait_job_done(dao, b)
    order = [job for _, job, _ in sorted(Recorder.log)]
    for n in (40, 80, 120, 160, 200):  # at every point, neither is far ahead
        sent_a, sent_b = order[:n].count(a), order[:n].count(b)
        assert min(sent_a, sent_b) >= n // 4, (n, sent_a, sent_b)


def test_a_small_job_finishes_long_before_a_big_one_started_earlier(client, key, dao):
    fresh_recorder()
    big = post(client, key, body(600)).json["job_id"]
    s = fast(dao.settings, claim_batch=50, runner_concurrency=2)
    with running(s, dao, factory=Recorder):
        wait_for(lambda: dao.recipient_counts(big).get("sent", 0) >= 50, 20, message="big going")
        posted = time.monotonic()
        small = post(client, key, body(20)).json["job_id"]
        assert wait_job_done(dao, small) == "completed"
        small_done = time.monotonic() - posted
        assert dao.job(big).status == "running"
    big_sends_during = sum(1 for t, job, _ in Recorder.log if job == big and t > posted)
    assert small_done < 5.0
    assert big_sends_during > 0  # the big job kept going meanwhile


def test_a_sender_at_its_limit_does_not_hold_back_another_senders_job(client, make_key, dao):
    fresh_recorder()
    key = make_key(senders=["*"])
    slow = post(client, key, body(10, sender_email="slow@example.com")).json["job_id"]
    fast_job = post(client, key, body(30, sender_email="fast@example.com")).json["job_id"]
    dao.set_sender_limits("fast@example.com", 0, 0)  # unlimited
    s = fast(dao.settings, sender_rate_per_minute=60, sender_burst_seconds=1.0)
    with running(s, dao, factory=Recorder):
        assert wait_job_done(dao, fast_job, timeout=15) == "completed"
        assert dao.recipient_counts(slow).get("sent", 0) <= 3   # 1/s for slow@
    assert dao.job(slow).status in ("queued", "running")  # waiting for its tokens


def test_expired_recipients_are_never_handed_to_the_transport(client, key, dao):
    fresh_recorder()
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    r = post(client, key, body(8, expires_at=expires.isoformat()))
    assert r.status_code == 202
    job_id = r.json["job_id"]
    s = fast(dao.settings, sender_rate_per_minute=60, sender_burst_seconds=1.0)
    with running(s, dao, factory=Recorder):
        assert wait_job_done(dao, job_id, timeout=15) == "completed_with_errors"
    rows = recipients(dao, job_id)
    sent = [x for x in rows if x.status == "sent"]
    expired = [x for x in rows if x.status == "expired"]
    assert len(sent) + len(expired) == 8 and 1 <= len(sent) <= 3
    assert all(x.error_code == "expired" for x in expired)
    assert all(x.attempts == 0 for x in expired)   # never handed to the transport: no attempt
    assert {rid for _, _, rid in Recorder.log} == {x.id for x in sent}
    assert all(t <= expires.timestamp() + 0.05 for t in [x.sent_at.timestamp() for x in sent])
    job = client.get(f"/api/jobs/{job_id}", headers={"X-API-Key": key}).json
    assert job["counts"]["expired"] == len(expired)
    assert "expired" in job["status_reason"]


def test_priority_and_expiry_are_validated(client, make_key, dao):
    limited = make_key(senders=["*"])
    from mailjobs.api_keys import create_key
    low_key = create_key(dao, "low", ["*"], max_priority=1).key
    r = post(client, low_key, body(1, priority="high"))
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (403, "priority_not_allowed", "priority")
    assert post(client, low_key, body(1, priority="normal")).status_code == 202
    r = post(client, limited, body(1, priority="urgent"))
    assert (r.status_code, r.json["field"]) == (400, "priority")
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = post(client, limited, body(1, expires_at=past))
    assert r.status_code == 400 and "expires_at is in the past" in r.json["message"]
    later = datetime.now(UTC) + timedelta(hours=2)
    r = post(client, limited, body(1, send_at=later.isoformat(),
                                   expires_at=(later - timedelta(hours=1)).isoformat()))
    assert r.status_code == 400 and "after send_at" in r.json["message"]
    ok = post(client, limited, body(1, priority="low", expires_at=later.isoformat()))
    job = client.get(ok.headers["Location"], headers={"X-API-Key": limited}).json
    assert job["priority"] == "low" and job["expires_at"].startswith(later.strftime("%Y-%m-%dT%H"))


def test_a_key_with_hundreds_of_waiting_jobs_cannot_crowd_out_another_key(client, make_key,
                                                                        dao):
    """Regression (found by bench/fairness.py): the oldest 200 jobs all belonged to one key
    whose sender was at its limit, so another key's job was never even offered a claim."""
    from mailjobs.records import NewJob, NewRecipient

    fresh_recorder()
    crowd, other = make_key(senders=["*"]), make_key(senders=["*"])
    crowd_id = dao.api_key_by_prefix(crowd.split("_")[1]).id
    for _ in range(210):
        dao.create_job(NewJob(crowd_id, "capped@example.com", None, None, "s", None, "t", {}, 1,
                              0, None, None), [NewRecipient("x@example.com", None, None)])
    dao.set_sender_limits("capped@example.com", 1, 0)  # 1 a minute: nearly always limited
    job_id = post(client, other, body(3, sender_email="free@example.com")).json["job_id"]
    dao.set_sender_limits("free@example.com", 0, 0)
    with running(fast(dao.settings), dao, factory=Recorder):
        assert wait_job_done(dao, job_id, timeout=10) == "completed"
