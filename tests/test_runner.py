"""The JobRunner over a real MariaDB with the outbox transport: claims, records, heartbeats,
leases, restarts. Gmail-specific behaviour is in test_runner_gmail.py."""
from __future__ import annotations

import email
import email.policy
import logging
import threading
import time

import pytest

from mailjobs import api_keys
from mailjobs.dao_mysql import Dao
from mailjobs.job_runner import EmbeddedRunner, JobRunner
from runner_helpers import fast, recipients, running, wait_for, wait_job_done
from test_api_enqueue import body, post


@pytest.fixture()
def outbox_settings(dao, tmp_path):
    return fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "outbox"))


def test_a_job_is_sent_end_to_end_into_the_outbox(client, key, dao, outbox_settings, tmp_path):
    job_id = post(client, key, body(5)).json["job_id"]
    with running(outbox_settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    files = sorted((tmp_path / "outbox").rglob("*.eml"))
    assert len(files) == 5
    rows = recipients(dao, job_id)
    assert {r.status for r in rows} == {"sent"}
    assert all(r.gmail_message_id and r.sent_at and r.attempts == 1 for r in rows)
    first = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    by_to = {r.to_email: r for r in rows}
    sent_to = first["To"].addresses[0].addr_spec
    assert first["Message-ID"] == by_to[sent_to].message_id
    assert first["Subject"] == f"Hi {by_to[sent_to].name}"
    job = dao.job(job_id, with_counts=True)
    assert job.counts == {"sent": 5}
    assert job.started_at and job.finished_at


def test_the_message_id_is_stored_before_the_send(dao, client, key, outbox_settings):
    """Claiming fixes the Message-ID on the row; the send then uses exactly that value."""
    from mailjobs.rate_limit import Limits

    job_id = post(client, key, body(2)).json["job_id"]
    rows, _ = dao.claim(job_id, "ops@example.com", "r-test", 10, 30, Limits(0, 0, 1))
    assert len(rows) == 2
    assert all(r.message_id and r.message_id.startswith("<mj.") and r.message_id.endswith(
        "@example.com>") for r in rows)
    assert {r.status for r in recipients(dao, job_id)} == {"sending"}


def test_a_rendered_header_with_crlf_is_refused_never_sent(client, key, dao, outbox_settings,
                                                           tmp_path):
    # A variable with a line break is refused at POST (test_api_enqueue); a line break the
    # template itself makes at render time is the runner's to refuse.
    b = body(2)
    b["template"]["subject"] = "Hello {{ topic|replace('+', '\\r\\nBcc: victim@example.com') }}"
    b["recipients"][0]["variables"] = {"topic": "x+"}
    b["recipients"][1]["variables"] = {"topic": "news"}
    job_id = post(client, key, b).json["job_id"]
    with running(outbox_settings, dao):
        assert wait_job_done(dao, job_id) == "completed_with_errors"
    bad, good = recipients(dao, job_id)
    assert (bad.status, bad.error_code) == ("failed", "header_injection")
    assert good.status == "sent"
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 1


def test_a_template_error_at_render_time_fails_that_recipient(client, key, dao, outbox_settings):
    b = body(2)
    b["template"]["text"] = "{{ n + 1 }}"
    b["recipients"][0]["variables"] = {"n": "not a number"}
    job_id = post(client, key, b).json["job_id"]
    with running(outbox_settings, dao):
        assert wait_job_done(dao, job_id) == "completed_with_errors"
    bad, good = recipients(dao, job_id)
    assert (bad.status, bad.error_code) == ("failed", "template_error")
    assert "TypeError" in bad.error
    assert good.status == "sent"


def test_two_runners_share_one_job_and_each_recipient_is_written_once(client, key, dao,
                                                                     outbox_settings, tmp_path):
    s = outbox_settings.with_overrides(claim_batch=20)
    with running(s, dao, count=2) as runners:
        wait_for(lambda: all(r.state == "idle" for r in runners), 10, message="runners idle")
        job_id = post(client, key, body(400)).json["job_id"]
        assert wait_job_done(dao, job_id) == "completed"
    files = list((tmp_path / "outbox").rglob("*.eml"))
    assert len(files) == 400
    assert all(r.attempts == 1 for r in recipients(dao, job_id))
    assert all(r.stats.sent > 0 for r in runners), [r.stats.sent for r in runners]


def test_an_expired_lease_is_taken_over_by_another_runner(client, key, dao, outbox_settings):
    from mailjobs.rate_limit import Limits

    job_id = post(client, key, body(3)).json["job_id"]
    rows, _ = dao.claim(job_id, "ops@example.com", "r-dead", 10, 1, Limits(0, 0, 1))
    assert len(rows) == 3  # a runner claimed them, then died without sending
    with running(outbox_settings, dao) as (runner,):
        assert wait_job_done(dao, job_id, timeout=20) == "completed"
    after = recipients(dao, job_id)
    assert {r.status for r in after} == {"sent"}
    assert {r.message_id for r in after} == {r.message_id for r in rows}  # same Message-ID
    assert all(r.attempts == 2 for r in after)


def test_heartbeat_row_and_log_lines(client, key, dao, outbox_settings, caplog):
    caplog.set_level(logging.INFO, logger="mailjobs")
    job_id = post(client, key, body(3)).json["job_id"]
    with running(outbox_settings, dao) as (runner,):
        wait_job_done(dao, job_id)
        wait_for(lambda: any("heartbeat:" in m for m in caplog.messages), 5,
                 message="a heartbeat log line")
        row = wait_for(lambda: [r for r in dao.live_runners(10) if r["sent_count"] == 3], 5,
                       message="the heartbeat row to count 3 sends")[0]
        assert row["id"] == runner.id
    messages = "\n".join(caplog.messages)
    assert f"runner {runner.id} started" in messages
    assert f"job={job_id} claimed 3 recipient(s)" in messages
    assert f"job={job_id} [3/3] sent to " in messages
    assert f"job={job_id} completed: sent=3" in messages
    assert dao.live_runners(10) == []  # stopped runners are not live
    assert dao.runners()[0]["state"] == "stopped"


def test_stopping_releases_unsent_claims(client, key, dao, outbox_settings):
    """A warm stop finishes the message in hand and gives the rest back, attempt refunded."""
    gate = threading.Event()
    started = threading.Event()

    class SlowTransport:
        name = "slow"

        def send(self, msg):
            from mailjobs.transports.base import SendResult
            started.set()
            gate.wait(10)
            return SendResult("slow-" + str(msg.recipient_id))

        def find_by_message_id(self, sender, message_id):
            return None

        def close(self):
            pass

    job_id = post(client, key, body(10)).json["job_id"]
    s = outbox_settings.with_overrides(runner_concurrency=1)
    runner = JobRunner(s, dao, SlowTransport)
    thread = threading.Thread(target=runner.run)
    thread.start()
    assert started.wait(10)
    runner.stop()
    wait_for(lambda: runner.state == "stopping", 10, message="the runner to start stopping")
    gate.set()  # only now may the message in hand finish
    thread.join(20)
    rows = recipients(dao, job_id)
    statuses = sorted(r.status for r in rows)
    assert statuses == ["queued"] * 9 + ["sent"]
    assert all(r.attempts == 0 for r in rows if r.status == "queued")
    assert all(r.claimed_by is None for r in rows)
    assert dao.runners()[0]["state"] == "stopped"


def test_the_runner_survives_a_mariadb_restart_mid_job(client, key, dao, outbox_settings,
                                                       database, tmp_path):
    if database.server is None:
        pytest.skip("needs the private test server")
    job_id = post(client, key, body(300)).json["job_id"]
    s = outbox_settings.with_overrides(claim_batch=10, db_backoff_max=1.0)
    worker_dao = Dao(s)   # the worker's process: its circuit breaker is not the observer's
    try:
        with running(s, worker_dao):
            wait_for(lambda: dao.recipient_counts(job_id).get("sent", 0) > 20, 20,
                     message="some sends")
            database.server.stop()
            time.sleep(2)
            database.server.start()
            assert wait_job_done(dao, job_id, timeout=60) == "completed"
    finally:
        database.server.start()
        worker_dao.close()
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 300
    assert dao.recipient_counts(job_id) == {"sent": 300}


def test_healthz_turns_503_when_the_runner_stops(dao, outbox_settings):
    from mailjobs.api_server import create_app

    app = create_app(outbox_settings, dao, runs_runner=True)
    c = app.test_client()
    assert c.get("/healthz").status_code == 503  # nothing running yet
    with running(outbox_settings, dao):
        wait_for(lambda: c.get("/healthz").status_code == 200, 5, message="healthz 200")
        assert c.get("/healthz").json["runners"] == 1
        assert c.get("/healthz").json["transport"] == "outbox"
    r = c.get("/healthz")
    assert r.status_code == 503
    assert "runner" in r.json["reason"]


def test_enqueue_warns_when_no_runner_is_alive(client, key, dao, outbox_settings):
    r = post(client, key, body(1))
    assert r.status_code == 202
    assert r.json["warnings"] and "no live runner" in r.json["warnings"][0]
    with running(outbox_settings, dao):
        wait_for(lambda: dao.live_runners(5), 5, message="a live runner")
        assert post(client, key, body(1)).json["warnings"] == []


def test_the_embedded_runner_is_restarted_when_its_thread_dies(dao, outbox_settings, caplog):
    caplog.set_level(logging.ERROR, logger="mailjobs")
    made = []

    class Crashing(JobRunner):
        def run(self):
            if len(made) == 1:
                raise RuntimeError("boom")
            super().run()

    def make():
        r = Crashing(outbox_settings, dao, lambda: None, kind="embedded")
        made.append(r)
        return r

    embedded = EmbeddedRunner(make, check_interval=0.05).start()
    try:
        wait_for(lambda: embedded.restarts == 1 and len(made) == 2, 5, message="a restart")
        assert any("exited unexpectedly" in m for m in caplog.messages)
    finally:
        embedded.stop()


def test_an_embedded_runner_is_woken_by_the_api_instead_of_waiting_for_its_poll(dao, tmp_path):
    """POLL_INTERVAL 30 s: a job posted to the API process that runs the runner is sent long
    before the next poll, because the commit wakes the runner (separate workers still poll)."""
    from mailjobs.api_server import create_app

    s = fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "outbox"),
             poll_interval=30.0)
    with running(s, dao) as (runner,):
        wait_for(lambda: runner.state == "idle", 10, message="the runner idle in its poll wait")
        app = create_app(s, dao, runs_runner=True, on_enqueue=runner.wake)
        key = api_keys.create_key(dao, "wake", ["*"]).key
        job_id = post(app.test_client(), key, body(2)).json["job_id"]
        assert wait_job_done(dao, job_id, timeout=10) == "completed"   # not after 30 s


class _GatedTransport:
    """Sends nothing; the first send waits until `release` is set, the others go at once."""
    name = "gated"

    def __init__(self, sent: list[str], release: threading.Event) -> None:
        self.sent, self.release = sent, release

    def send(self, msg):
        from mailjobs.transports.base import SendResult

        if not self.sent:
            self.release.wait(30)
        self.sent.append(msg.to_email)
        return SendResult(provider_id=f"p{len(self.sent)}")

    def find_by_message_id(self, sender_email, message_id):
        return None

    def close(self) -> None:
        pass


def test_a_claim_taken_over_while_its_lease_could_not_be_renewed_is_not_sent(
        client, key, dao, outbox_settings, caplog):
    """A runner whose claims another runner took over (its lease ran out while it could not
    renew: a database pause) must not send them once its renewals succeed again for the rest:
    the renewal confirms only the claims that are still its own. Regression: every claim in
    hand was marked confirmed, and the other runner's recipient was sent twice."""
    caplog.set_level(logging.WARNING, logger="mailjobs.runner")
    job_id = post(client, key, body(2)).json["job_id"]
    sent: list[str] = []
    release = threading.Event()
    settings = outbox_settings.with_overrides(runner_concurrency=1, lease_seconds=3)
    with running(settings, dao, factory=lambda: _GatedTransport(sent, release)) as (runner,):
        wait_for(lambda: len(runner._hand.futures) == 2 and len(sent) == 0, 10,
                 message="two claims in hand, the first send held")
        taken = max(runner._hand.futures)     # waits behind the held one (one sending thread)
        with dao.transaction() as cur:   # what another runner's take-over writes
            cur.execute("UPDATE job_recipients SET claimed_by = 'r-other', "
                        "attempts = attempts + 1 WHERE id = %s", (taken,))
        held = min(runner._hand.futures)

        def lease_of_held():
            with dao.transaction() as cur:
                cur.execute("SELECT lease_expires_at FROM job_recipients WHERE id = %s", (held,))
                return cur.fetchone()[0]
        # two renewals after the take-over: the first one's bookkeeping is done once the
        # second (same thread, later) has written
        for _ in range(2):
            before = lease_of_held()
            wait_for(lambda b=before: lease_of_held() > b, 10, message="a lease renewal")
        release.set()
        wait_for(lambda: taken not in runner._hand.futures and len(sent) >= 1, 10,
                 message="the held send to end and the taken-over claim to leave the hand")
    row = next(r for r in recipients(dao, job_id) if r.id == taken)
    assert row.to_email not in sent
    assert (row.status, row.claimed_by) == ("sending", "r-other")   # left to its owner
    assert any("taken over by another runner" in m for m in caplog.messages)
