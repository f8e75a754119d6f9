"""Scenario 5: an operator pauses, resumes, retries-by-error-code and cancels jobs through the
API while worker processes are sending them.

Job A: its first sends are refused for good (Gmail 400, `gmail_400`); it is paused (no send
after the messages in flight), resumed, and its gmail_400 recipients retried while it runs: it
ends `completed`, each recipient sent exactly once. Job B is cancelled half-way: its recipients
end `sent` (exactly once) or `cancelled` (never sent), nothing else.
"""
from __future__ import annotations

import time

from faults_tools import (
    assert_exactly_once,
    check_counts,
    h,
    post_job,
    report,
    sends_of_job,
    size,
    wait_final,
    wait_for,
)

WORKERS = 2
REFUSED = 6          # first sends refused with 400 (under the auto-pause threshold)


def act(client, key, job_id: int, action: str, json=None):
    r = client.post(f"/api/jobs/{job_id}/{action}", headers=h(key), json=json)
    assert r.status_code == 200, r.json
    return r.json


def sending(dao, job_id: int) -> int:
    return dao.recipient_counts(job_id).get("sending", 0)


def test_pause_resume_retry_and_cancel_under_load(client, key, dao, fake, fleet):
    n = size(400)
    fake.send_latency = 0.1
    fake.fail_next(400, "invalidArgument", "Invalid To header", count=REFUSED)
    a = post_job(client, key, n, prefix="a")
    started = time.monotonic()
    fleet.start_many(WORKERS)
    wait_for(lambda: dao.recipient_counts(a).get("failed", 0) == REFUSED, 60,
             f"{REFUSED} refused")
    b = post_job(client, key, n, prefix="b")
    wait_for(lambda: len(sends_of_job(fake, a)) >= n // 4, 60 + n / 10, "a quarter of A sent")

    # Pause A: what is in flight finishes, then nothing more is sent until it is resumed.
    assert act(client, key, a, "pause")["status"] == "paused"
    paused_at = time.monotonic()
    wait_for(lambda: sending(dao, a) == 0, 10, "A's claims given back")
    give_back = time.monotonic() - paused_at
    frozen = sends_of_job(fake, a)
    time.sleep(1.5)
    assert sends_of_job(fake, a) == frozen, "A was sent while paused"
    assert dao.job(a).status == "paused" and sending(dao, a) == 0
    assert len(sends_of_job(fake, b)) > 0, "B did not go on while A was paused"

    assert act(client, key, a, "resume")["status"] == "running"
    wait_for(lambda: len(sends_of_job(fake, a)) > len(frozen), 30, "A sending again")

    # Retry A's refused recipients while A runs.
    job = act(client, key, a, "retry", {"status": ["failed"], "error_code": ["gmail_400"]})
    assert job["status"] == "running", job
    assert job["counts"].get("failed", 0) == 0, job["counts"]

    # Cancel B half-way.
    wait_for(lambda: len(sends_of_job(fake, b)) >= n // 2, 60 + n / 5, "half of B sent")
    assert act(client, key, b, "cancel")["status"] == "cancelled"
    cancelled_at = time.monotonic()
    wait_for(lambda: sending(dao, b) == 0, 10, "B's claims given back or recorded")
    settle = time.monotonic() - cancelled_at
    settled = sends_of_job(fake, b)
    time.sleep(1.0)
    assert sends_of_job(fake, b) == settled, "B was sent after it was cancelled"

    status_a = wait_final(dao, a, 60 + n / 5, fleet)
    elapsed = time.monotonic() - started
    assert not fleet.exited(), f"workers exited by themselves: {fleet.exited()}"
    fleet.stop_all_cleanly()

    counts_a = check_counts(client, key, dao, a)
    counts_b = check_counts(client, key, dao, b)
    sends_b = sends_of_job(fake, b)
    rows_b = dao.recipients_page(b, None, 0, 1_000_000)
    report("job_control", recipients_per_job=n, seconds=round(elapsed, 1), status_a=status_a,
           counts_a=counts_a, status_b=dao.job(b).status, counts_b=counts_b,
           pause_give_back_seconds=round(give_back, 2),
           cancel_settle_seconds=round(settle, 2),
           refused_then_retried=REFUSED)

    assert status_a == "completed" and counts_a == {"sent": n}
    assert_exactly_once(fake, dao, a, n)
    assert dao.job(b).status == "cancelled"
    assert set(counts_b) <= {"sent", "cancelled"}, counts_b
    assert counts_b.get("cancelled", 0) > 0
    assert all(k == 1 for k in sends_b.values()), "a recipient of B got two messages"
    assert {r.to_email for r in rows_b if r.status == "sent"} == set(sends_b)
    assert {r.gmail_message_id for r in rows_b if r.status == "sent"} == \
        {s.id for s in fake.sent if s.message["To"].addresses[0].addr_spec in sends_b}
