"""The runner sending through the real google-api-python-client to a fake Gmail on 127.0.0.1:
message contents, each error class, retries, token refresh and revocation, timeouts, and two
runners sending each recipient exactly once."""
from __future__ import annotations

import email.policy
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest

from mailjobs.transports.credentials import CredentialStore
from runner_helpers import recipients, running, wait_for, wait_job_done
from test_api_enqueue import body, post

SENDER = "ops@example.com"


def sent_to(fake, address):
    return fake.sent_to(address)


def test_a_job_is_sent_end_to_end_with_correct_contents(client, key, dao, fake, gmail_settings):
    b = body(2)
    b["from_name"] = "Équipe Ops"
    b["template"] = {"subject": "Grüße, {{ name }} ✓",
                     "html": "<p>Hello {{ name }} & {{ company }}</p>",
                     "text": "Hello {{ name }} from {{ company }}"}
    b["recipients"][0]["name"] = "Zoë <script>"
    job_id = post(client, key, b).json["job_id"]
    with running(gmail_settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.count() == 2
    rows = {r.to_email: r for r in recipients(dao, job_id)}
    (got,) = sent_to(fake, "user0@example.com")
    msg = email.message_from_bytes(got.raw, policy=email.policy.default)
    assert got.account == SENDER
    assert msg["Subject"] == "Grüße, Zoë <script> ✓"
    assert msg["From"].addresses[0].display_name == "Équipe Ops"
    assert msg["From"].addresses[0].addr_spec == SENDER
    assert msg["To"].addresses[0].addr_spec == "user0@example.com"
    assert msg["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert msg["Message-ID"] == rows["user0@example.com"].message_id
    assert msg["Date"]
    assert msg.get_content_type() == "multipart/alternative"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert "Hello Zoë <script> from Acme" in text          # text is not escaped
    assert "Hello Zoë &lt;script&gt; & Acme" in html      # values autoescaped in html
    assert rows["user0@example.com"].gmail_message_id == got.id
    assert rows["user0@example.com"].status == "sent"


@pytest.mark.parametrize("status, reason, message, code", [
    (400, "invalidArgument", "Invalid To header", "gmail_400"),
    (400, "badRequest", "Request payload size exceeds the limit", "message_too_large"),
])
def test_permanent_errors_fail_the_recipient_at_once(client, key, dao, fake, gmail_settings,
                                                     status, reason, message, code):
    fake.fail_next(status, reason, message, count=1)
    job_id = post(client, key, body(1)).json["job_id"]
    with running(gmail_settings, dao):
        assert wait_job_done(dao, job_id) == "failed"
    (r,) = recipients(dao, job_id)
    assert (r.status, r.error_code, r.attempts) == ("failed", code, 1)
    assert message in r.error and str(status) in r.error
    assert fake.count() == 0


@pytest.mark.parametrize("status, reason, message, code, attempts", [
    (500, "backendError", None, "gmail_5xx", 2),
    (503, "backendError", None, "gmail_5xx", 2),
    # refused for a rate: nothing was sent, so the retry is still the first attempt
    (429, "rateLimitExceeded", "Rate Limit Exceeded", "gmail_429", 1),
    (429, "rateLimitExceeded", None, "gmail_concurrent", 1),
    (403, "userRateLimitExceeded", None, "rate_limited", 1),
])
def test_transient_errors_are_retried_and_then_sent(client, key, dao, fake, gmail_settings,
                                                    status, reason, message, code, attempts,
                                                    caplog):
    fake.fail_next(status, reason, message, count=1)
    job_id = post(client, key, body(1)).json["job_id"]
    with running(gmail_settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    (r,) = recipients(dao, job_id)
    assert (r.status, r.attempts, r.error_code) == ("sent", attempts, None)
    assert fake.count() == 1
    assert any(f"[{code}]" in m and "retry" in m for m in caplog.messages)


def test_retry_after_is_honoured(client, key, dao, fake, gmail_settings):
    fake.fail_next(429, "rateLimitExceeded", headers={"Retry-After": "2"})
    job_id = post(client, key, body(1)).json["job_id"]
    with running(gmail_settings, dao):
        wait_for(lambda: recipients(dao, job_id)[0].status == "retrying", 10, message="retrying")
        seen = time.monotonic()
        r = recipients(dao, job_id)[0]
        assert r.next_attempt_at - r.updated_at >= timedelta(seconds=1.99)  # Retry-After: 2
        assert wait_job_done(dao, job_id) == "completed"
        assert time.monotonic() - seen >= 1.5  # not before Retry-After (minus our poll slack)


def test_a_recipient_fails_after_max_attempts(client, key, dao, fake, gmail_settings):
    fake.fail_next(503, count=10)
    job_id = post(client, key, body(1)).json["job_id"]
    with running(gmail_settings.with_overrides(max_attempts=3), dao):
        assert wait_job_done(dao, job_id) == "failed"
    (r,) = recipients(dao, job_id)
    assert (r.status, r.attempts, r.error_code) == ("failed", 3, "gmail_5xx")
    assert r.error.startswith("gave up after 3 attempts: Gmail 503")


def test_a_daily_limit_defers_the_sender_without_burning_attempts(client, key, dao, fake,
                                                                  gmail_settings):
    until = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    fake.fail_next(429, "rateLimitExceeded", "User-rate limit exceeded.  Retry after "
                   + until.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
    job_id = post(client, key, body(1)).json["job_id"]
    with running(gmail_settings, dao):
        wait_for(lambda: dao.senders()[0]["paused_until"] is not None, 10, message="deferral")
        sender = dao.senders()[0]
        assert "User-rate limit exceeded" in sender["paused_reason"]
        r = recipients(dao, job_id)[0]
        assert (r.status, r.attempts, r.error_code) == ("retrying", 0, "daily_limit")
        assert wait_job_done(dao, job_id) == "completed"
    assert recipients(dao, job_id)[0].attempts == 1
    assert fake.sent[0].time >= until.timestamp() - 0.1


def test_an_expired_access_token_is_refreshed_and_saved(client, key, dao, fake, gmail_settings):
    store = CredentialStore(gmail_settings, dao)
    before = store.load_info(SENDER)["token"]
    fake.expire_tokens(SENDER)  # the stored access token is now refused with 401
    job_id = post(client, key, body(2)).json["job_id"]
    with running(gmail_settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    after = store.load_info(SENDER)["token"]
    assert after != before
    assert ("POST", "/token", 200) in [(m, p.split("?")[0], s) for m, p, s in fake.requests]
    assert fake.count() == 2


def test_a_revoked_grant_pauses_the_senders_jobs_and_reauth_resumes_them(
        client, key, dao, fake, gmail_settings):
    fake.revoke(SENDER)
    job_id = post(client, key, body(3)).json["job_id"]
    with running(gmail_settings, dao):
        wait_for(lambda: dao.job(job_id).status == "paused", 15, message="job paused")
        job = dao.job(job_id, with_counts=True)
        assert "auth_revoked" in job.status_reason
        assert "failed" not in job.counts and "sent" not in job.counts
        assert dao.senders()[0]["auth_state"] == "auth_revoked"
        assert fake.count() == 0
        # the owner re-authorises (mailjobs auth): a new grant, stored, jobs resume
        fake.add_account(SENDER)
        CredentialStore(gmail_settings, dao).store_info(
            SENDER, fake.authorized_user_info(SENDER), resume=True)
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.count() == 3
    assert dao.senders()[0]["auth_state"] == "ok"


def test_a_sender_refused_by_policy_pauses_its_jobs(client, key, dao, fake, gmail_settings):
    fake.fail_next(403, "domainPolicy", "The domain administrators have disabled Gmail apps.",
                   count=5)
    job_id = post(client, key, body(2)).json["job_id"]
    with running(gmail_settings, dao):
        wait_for(lambda: dao.job(job_id).status == "paused", 15, message="job paused")
    job = dao.job(job_id)
    assert "domainPolicy" in job.status_reason
    assert dao.senders()[0]["auth_state"] == "config_error"
    assert all(r.status != "failed" for r in recipients(dao, job_id))


def test_a_hung_gmail_hits_the_timeout_and_the_send_it_finished_later_is_found_not_resent(
        client, key, dao, fake, gmail_settings, caplog):
    """Gmail stores a send 3 s after it was asked, the client gave up after 1 s: the runner goes
    on with the others, and looks the timed-out one up only IN_DOUBT_CHECK_DELAY later, when it
    is there; looked up at once (the backoff alone), it was not found yet and was sent twice."""
    fake.hang_next(3, count=1)
    job_id = post(client, key, body(4)).json["job_id"]
    settings = gmail_settings.with_overrides(gmail_timeout=1.0, in_doubt_check_delay=5.0)
    with caplog.at_level(logging.INFO, logger="mailjobs.runner"):
        with running(settings, dao):
            assert wait_job_done(dao, job_id, timeout=30) == "completed"
    wait_for(lambda: fake.in_flight(SENDER) == 0, 10)   # the hung send is answered (stored)
    rows = recipients(dao, job_id)
    sends = {r.to_email: fake.sent_to(r.to_email) for r in rows}
    assert all(len(s) == 1 for s in sends.values()), sends             # none sent twice
    (hung,) = [r for r in rows if r.attempts == 2]
    (stored,) = sends[hung.to_email]
    assert (hung.status, hung.gmail_message_id) == ("sent", stored.id)     # recorded as found
    # the others went out while the hung send was still being answered: the timeout fired
    assert all(s[0].time < stored.time for a, s in sends.items() if a != hung.to_email)
    (retry,) = [m for m in caplog.messages if "[timeout]" in m and "retry" in m]
    assert hung.to_email in retry and float(retry.split(" in ")[1].split(" s:")[0]) >= 5.0
    assert [m for m in caplog.messages if "recovered" in m and hung.to_email in m]


def test_two_runners_send_each_of_1000_recipients_exactly_once(client, key, dao, fake,
                                                               gmail_settings):
    s = gmail_settings.with_overrides(claim_batch=50, runner_concurrency=4)
    with running(s, dao, count=2) as runners:
        # both polling before the job exists, so each has the same chance at it
        wait_for(lambda: all(r.state == "idle" for r in runners), 10, message="runners idle")
        job_id = post(client, key, body(1000)).json["job_id"]
        assert wait_job_done(dao, job_id, timeout=120) == "completed"
    addresses = [s.message["To"].addresses[0].addr_spec for s in fake.sent]
    assert len(addresses) == 1000
    assert len(set(addresses)) == 1000
    assert {r.gmail_message_id for r in recipients(dao, job_id)} == {s.id for s in fake.sent}
    assert all(r.stats.sent > 100 for r in runners), [r.stats.sent for r in runners]


def test_a_stale_auth_failure_does_not_pause_a_reauthorised_sender(client, key, dao, fake,
                                                                  gmail_settings):
    """Regression: a send that failed with the old grant, recorded after `mailjobs auth`
    stored a new one, must not pause the sender's jobs again."""
    from datetime import datetime

    job_id = post(client, key, body(1)).json["job_id"]
    before_reauth = datetime.now(UTC)
    time.sleep(0.01)
    CredentialStore(gmail_settings, dao).store_info(SENDER, fake.authorized_user_info(SENDER),
                                                    resume=True)
    assert dao.pause_sender(SENDER, "auth_revoked", "old grant", "sender_auth",
                            before_reauth) is None
    assert dao.job(job_id).status == "queued"
    assert dao.pause_sender(SENDER, "auth_revoked", "new failure", "sender_auth",
                            datetime.now(UTC)) == 1
    assert dao.job(job_id).status == "paused"
