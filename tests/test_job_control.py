"""Operators' control of jobs (cancel, pause, resume, retry by error code), scheduled sends,
auto-pause, the error summary, and in-doubt sends resolved by IN_DOUBT_POLICY."""
from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from mailjobs.job_runner import JobRunner
from mailjobs.rate_limit import Limits
from mailjobs.transports.base import SendResult
from runner_helpers import fast, recipients, running, wait_for, wait_job_done
from test_api_enqueue import body, post

SENDER = "ops@example.com"


def h(key):
    return {"X-API-Key": key}


def act(client, key, job_id, action, json=None):
    return client.post(f"/api/jobs/{job_id}/{action}", headers=h(key), json=json)


@pytest.fixture()
def outbox(dao, tmp_path):
    return fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "outbox"))


# --- cancel, pause, resume -------------------------------------------------------------------
def test_cancel_a_queued_job_sends_nothing(client, key, dao, outbox, tmp_path):
    job_id = post(client, key, body(4)).json["job_id"]
    r = act(client, key, job_id, "cancel")
    assert r.status_code == 200
    assert (r.json["status"], r.json["counts"]) == ("cancelled", {"cancelled": 4})
    assert r.json["finished_at"]
    with running(outbox, dao):
        time.sleep(0.5)
    assert not list((tmp_path / "outbox").rglob("*.eml"))
    again = act(client, key, job_id, "cancel")
    assert (again.status_code, again.json["error"]) == (409, "conflict")
    assert "cancelled" in again.json["message"]


def test_pause_stops_claims_and_resume_finishes_the_job(client, key, dao, outbox):
    job_id = post(client, key, body(3)).json["job_id"]
    assert act(client, key, job_id, "pause").json["status"] == "paused"
    with running(outbox, dao):
        time.sleep(0.5)
        assert dao.recipient_counts(job_id) == {"queued": 3}
        r = act(client, key, job_id, "resume")
        assert (r.status_code, r.json["status"]) == (200, "queued")
        assert wait_job_done(dao, job_id) == "completed"
    assert act(client, key, job_id, "resume").status_code == 409
    assert act(client, key, job_id, "pause").status_code == 409


class GatedTransport:
    """Sends only when the test opens the gate; counts what it sent."""
    name = "gated"
    gate = threading.Event()
    started = threading.Event()
    sent: list[int] = []

    def send(self, msg):
        GatedTransport.started.set()
        GatedTransport.gate.wait(10)
        GatedTransport.sent.append(msg.recipient_id)
        return SendResult(f"g-{msg.recipient_id}")

    def find_by_message_id(self, sender, message_id):
        return None

    def close(self):
        pass


@pytest.mark.parametrize("action, leftover", [("pause", "queued"), ("cancel", "cancelled")])
def test_a_running_job_gives_back_unstarted_claims_within_a_poll(client, key, dao, outbox,
                                                                 action, leftover):
    GatedTransport.gate.clear()
    GatedTransport.started.clear()
    GatedTransport.sent = []
    job_id = post(client, key, body(10)).json["job_id"]
    s = outbox.with_overrides(runner_concurrency=1)
    runner = JobRunner(s, dao, GatedTransport)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        assert GatedTransport.started.wait(10)
        assert act(client, key, job_id, action).status_code == 200
        wait_for(lambda: dao.recipient_counts(job_id).get("sending", 0) == 1, 5,
                 message="unstarted claims given back")
        GatedTransport.gate.set()  # the message in hand completes and is recorded as sent
        wait_for(lambda: dao.recipient_counts(job_id).get("sent") == 1, 5, message="one sent")
    finally:
        GatedTransport.gate.set()
        runner.stop()
        thread.join(20)
    assert dao.recipient_counts(job_id) == {"sent": 1, leftover: 9}
    assert len(GatedTransport.sent) == 1
    assert all(r.attempts == 0 for r in recipients(dao, job_id) if r.status == leftover)


def test_a_runner_forgets_a_job_cancelled_while_it_held_claims(client, key, dao, outbox):
    """The runner's caches of a job (its row, progress, error window) go once the job is final,
    also when it was not this runner's finish that ended it: here an operator's cancel."""
    GatedTransport.gate.clear()
    GatedTransport.started.clear()
    GatedTransport.sent = []
    job_id = post(client, key, body(5)).json["job_id"]
    runner = JobRunner(outbox.with_overrides(runner_concurrency=1), dao, GatedTransport)
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        assert GatedTransport.started.wait(10)
        assert job_id in runner._jobs   # what the runner keeps is the point here
        assert act(client, key, job_id, "cancel").status_code == 200
        wait_for(lambda: dao.recipient_counts(job_id).get("sending", 0) == 1, 5,
                 message="unstarted claims given back")
        GatedTransport.gate.set()   # the send in hand ends and is recorded
        wait_for(lambda: dao.recipient_counts(job_id).get("sent") == 1, 5, message="one sent")
        wait_for(lambda: job_id not in runner._jobs and job_id not in runner._progress, 5,
                 message="the cancelled job dropped from the runner's caches")
    finally:
        GatedTransport.gate.set()
        runner.stop()
        thread.join(20)
    assert dao.recipient_counts(job_id) == {"sent": 1, "cancelled": 4}


def test_another_keys_job_cannot_be_controlled(client, key, make_key):
    job_id = post(client, key, body(1)).json["job_id"]
    other = make_key(senders=["*"])
    for action in ("cancel", "pause", "resume", "retry"):
        assert act(client, other, job_id, action).status_code == 404


# --- retry and the error summary -------------------------------------------------------------
def test_retry_by_error_code_resends_only_those(client, key, dao, fake, gmail_settings):
    fake.fail_next(400, "invalidArgument", "Invalid To header", count=2)
    job_id = post(client, key, body(5)).json["job_id"]
    with running(gmail_settings, dao):
        assert wait_job_done(dao, job_id) == "completed_with_errors"
        job = client.get(f"/api/jobs/{job_id}", headers=h(key)).json
        assert job["counts"] == {"sent": 3, "failed": 2}
        assert job["errors"] == [{"error_code": "gmail_400", "count": 2,
                                  "example": "Gmail 400 invalidArgument: Invalid To header"}]
        none = act(client, key, job_id, "retry", {"error_code": ["gmail_5xx"]})
        assert (none.status_code, none.json["error"]) == (409, "conflict")
        r = act(client, key, job_id, "retry", {"status": ["failed"], "error_code": ["gmail_400"]})
        assert r.status_code == 200
        assert r.json["status"] == "running"
        assert r.json["counts"].get("failed", 0) == 0
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.count() == 5
    retried = [x for x in recipients(dao, job_id) if x.attempts == 2]
    assert len(retried) == 2  # attempts keep the history


def test_retry_filter_is_validated(client, key, dao):
    job_id = post(client, key, body(1)).json["job_id"]
    r = act(client, key, job_id, "retry", {"status": ["sent"]})
    assert (r.status_code, r.json["field"]) == (400, "status[0]")
    r = act(client, key, job_id, "retry", {"colour": 1})
    assert (r.status_code, r.json["field"]) == (400, "colour")


# --- scheduled sends ---------------------------------------------------------------------------
def test_a_scheduled_job_waits_until_send_at(client, key, dao, outbox, tmp_path):
    at = datetime.now(UTC) + timedelta(seconds=3)
    r = post(client, key, body(2, send_at=at.isoformat()))
    assert (r.status_code, r.json["status"]) == (202, "scheduled")
    job_id = r.json["job_id"]
    with running(outbox, dao):
        assert wait_job_done(dao, job_id) == "completed"
    # polled many times before send_at, and nothing went out until then (the files' times)
    assert dao.job(job_id).started_at >= at - timedelta(milliseconds=50)
    written = [f.stat().st_mtime for f in (tmp_path / "outbox").rglob("*.eml")]
    assert len(written) == 2 and min(written) >= at.timestamp() - 0.05


def test_a_scheduled_job_can_be_cancelled(client, key, dao):
    at = datetime.now(UTC) + timedelta(hours=1)
    job_id = post(client, key, body(2, send_at=at.isoformat())).json["job_id"]
    assert act(client, key, job_id, "cancel").json["status"] == "cancelled"


def test_send_at_without_an_offset_is_400(client, key, dao):
    r = post(client, key, body(1, send_at="2030-01-01T10:00:00"))
    assert (r.status_code, r.json["field"]) == (400, "send_at")


# --- auto-pause --------------------------------------------------------------------------------
def test_a_job_failing_too_often_is_paused_with_the_dominant_error(client, key, dao, outbox,
                                                                   caplog):
    caplog.set_level(logging.ERROR, logger="mailjobs")
    b = body(40)
    b["template"]["text"] = "{{ n + 1 }}"
    for r in b["recipients"]:
        r["variables"] = {"n": "x"}  # every render fails: a broken template
    job_id = post(client, key, b).json["job_id"]
    s = outbox.with_overrides(error_window=10, max_error_rate=0.5, claim_batch=5,
                              runner_concurrency=1)
    with running(s, dao):
        wait_for(lambda: dao.job(job_id).status == "paused", 15, message="auto-pause")
    job = dao.job(job_id, with_counts=True)
    assert job.paused_by == "error_rate"
    assert "template_error" in job.status_reason
    # stopped within one window: counted as each send ends, so with one sending thread for the
    # key the 11th send never starts, however fast the sends fail; the rest wait, unsent
    assert job.counts.get("failed", 0) == 10, job.counts
    assert set(job.counts) <= {"failed", "queued", "retrying"}, job.counts
    assert sum(job.counts.values()) == 40
    assert any(f"job={job_id} auto-paused" in m for m in caplog.messages)


# --- in-doubt sends ----------------------------------------------------------------------------
def test_a_5xx_after_gmail_accepted_is_resolved_by_check_without_a_duplicate(
        client, key, dao, fake, gmail_settings, caplog):
    fake.fail_next(500, store_anyway=True)  # Gmail kept the mail, the client saw a 500
    job_id = post(client, key, body(1)).json["job_id"]
    with running(gmail_settings.with_overrides(in_doubt_policy="check"), dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.count() == 1
    (r,) = recipients(dao, job_id)
    assert (r.status, r.gmail_message_id) == ("sent", fake.sent[0].id)
    assert any("recovered" in m for m in caplog.messages)


def test_resend_policy_sends_again_and_may_duplicate(client, key, dao, fake, gmail_settings):
    fake.fail_next(500, store_anyway=True)
    job_id = post(client, key, body(1)).json["job_id"]
    with running(gmail_settings.with_overrides(in_doubt_policy="resend"), dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.count() == 2  # at-least-once: the documented cost of resend


def test_hold_policy_leaves_it_to_an_operator(client, key, dao, fake, gmail_settings):
    fake.fail_next(503, store_anyway=True)
    job_id = post(client, key, body(2)).json["job_id"]
    s = gmail_settings.with_overrides(in_doubt_policy="hold")
    with running(s, dao):
        assert wait_job_done(dao, job_id) == "completed_with_errors"
        held = [r for r in recipients(dao, job_id) if r.status == "in_doubt"]
        assert len(held) == 1 and held[0].error_code == "gmail_5xx"
        assert "in doubt" in dao.job(job_id).status_reason
        r = act(client, key, job_id, "retry", {"status": ["in_doubt"]})  # the operator decides
        assert r.status_code == 200
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.count() == 3


def test_an_expired_lease_mid_send_is_checked_before_sending_again(client, key, dao, outbox,
                                                                   tmp_path):
    from mailjobs.email_scheduler import EmailScheduler
    from mailjobs.transports.outbox import OutboxTransport

    job_id = post(client, key, body(2)).json["job_id"]
    rows, _ = dao.claim(job_id, SENDER, "r-dead", 10, 1, Limits(0, 0, 1))
    # the dead runner had handed the first message over before it died
    job = dao.job(job_id)
    OutboxTransport(tmp_path / "outbox").send(EmailScheduler(outbox).render(job, rows[0]))
    with running(outbox.with_overrides(in_doubt_policy="check"), dao):
        assert wait_job_done(dao, job_id, timeout=20) == "completed"
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 2  # no duplicate
    first = [r for r in recipients(dao, job_id) if r.id == rows[0].id][0]
    assert first.gmail_message_id == f"{job_id}/{rows[0].id}.eml"
