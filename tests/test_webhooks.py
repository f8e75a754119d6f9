"""Signed event webhooks: endpoints per API key, the events outbox written with the state change,
delivery by the runners (Standard Webhooks signatures checked with the `standardwebhooks`
package from PyPI), retries, disabling, batching, address rules, secret rotation, and a runner
killed between the outcome and the delivery. Every receiver is a real HTTP server on 127.0.0.1
(tests/webhook_receiver.py)."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from standardwebhooks import Webhook, WebhookVerificationError

from mailjobs.api_server import create_app
from mailjobs.job_control import Decision
from runner_helpers import count_rows, fast, recipients, running, wait_for, wait_job_done
from test_api_enqueue import body, post
from webhook_receiver import Receiver

ROOT = Path(__file__).resolve().parents[1]
ALL_TYPES = ["recipient.sent", "recipient.failed", "recipient.bounced", "recipient.complained",
             "recipient.unsubscribed", "recipient.suppressed", "job.completed", "job.paused"]


@pytest.fixture()
def hook_settings(dao):
    return fast(dao.settings, mail_transport="null", webhook_allow_private=True,
                webhook_allow_http=True, webhook_poll_interval=0.05,
                webhook_retry_schedule="0.3,0.6,1.0", webhook_lease_seconds=30,
                token_encryption_key=Fernet.generate_key().decode())


@pytest.fixture()
def hooks(hook_settings, dao):
    """An API client over the webhook settings."""
    return create_app(hook_settings, dao).test_client()


@pytest.fixture()
def receiver():
    with Receiver() as r:
        yield r


def create(client, key, url, **fields):
    return client.post("/api/webhooks", json={"url": url, **fields}, headers={"X-API-Key": key})


def endpoint(client, key, url, **fields) -> dict:
    answer = create(client, key, url, **fields)
    assert answer.status_code == 201, answer.json
    return answer.json


def verified(secret: str, request) -> object:
    return Webhook(secret).verify(request.body, request.headers)


# --- endpoints -------------------------------------------------------------------------------
def test_create_answers_a_secret_once_and_a_key_sees_only_its_own_endpoints(hooks, make_key):
    mine, other = make_key(), make_key(name="other")
    operator = make_key(operator=True, name="op")
    created = endpoint(hooks, mine, "https://hooks.example.com/in", description="crm")
    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) >= 24
    assert created["events"] == ALL_TYPES and created["batch_size"] == 1 and created["enabled"]
    wid = created["id"]
    shown = hooks.get(f"/api/webhooks/{wid}", headers={"X-API-Key": mine}).json
    assert shown["description"] == "crm" and "secret" not in shown
    listed = hooks.get("/api/webhooks", headers={"X-API-Key": mine}).json
    assert [w["id"] for w in listed["webhooks"]] == [wid] and listed["next_after"] is None
    assert hooks.get("/api/webhooks", headers={"X-API-Key": other}).json["webhooks"] == []
    for method in ("get", "delete"):
        answer = getattr(hooks, method)(f"/api/webhooks/{wid}", headers={"X-API-Key": other})
        assert answer.status_code == 404 and answer.json["field"] == "webhook_id"
    theirs = endpoint(hooks, other, "https://other.example.com/in", events=["job.completed"])
    everyone = hooks.get("/api/webhooks", headers={"X-API-Key": operator}).json["webhooks"]
    assert [w["id"] for w in everyone] == [wid, theirs["id"]]
    assert hooks.delete(f"/api/webhooks/{wid}", headers={"X-API-Key": mine}).status_code == 204
    assert hooks.get(f"/api/webhooks/{wid}", headers={"X-API-Key": mine}).status_code == 404


@pytest.mark.parametrize(("fields", "field"), [
    ({"url": "ftp://hooks.example.com/"}, "url"),
    ({"url": "http://hooks.example.com/"}, "url"),           # https only by default
    ({"url": "https://10.1.2.3/in"}, "url"),                 # a private address
    ({"url": "https://[::1]/in"}, "url"),
    ({"url": "https://user:pw@hooks.example.com/"}, "url"),
    ({"url": "https://hooks.example.com/", "events": ["recipient.opened"]}, "events[0]"),
    ({"url": "https://hooks.example.com/", "events": []}, "events"),
    ({"url": "https://hooks.example.com/", "batch_size": 101}, "batch_size"),
    ({"url": "https://hooks.example.com/", "secret": "mine"}, "secret"),
    ({}, "url"),
])
def test_a_bad_endpoint_is_a_400_naming_the_field_and_nothing_is_stored(client, key, dao,
                                                                        fields, field):
    answer = client.post("/api/webhooks", json=fields, headers={"X-API-Key": key})
    assert answer.status_code == 400, answer.json
    assert answer.json["error"] == "validation_error" and answer.json["field"] == field
    assert count_rows(dao, "webhook_endpoints") == 0


# --- delivery --------------------------------------------------------------------------------
def test_every_recipients_event_arrives_signed_and_verifies_with_standardwebhooks(
        hooks, hook_settings, dao, key, receiver, make_key):
    hook = endpoint(hooks, key, receiver.url)
    job_id = post(hooks, key, body(5, metadata={"campaign": "c-7"})).json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: len(receiver.events()) == 6, message="5 recipient events + job")
    events = [verified(hook["secret"], r) for r in receiver.delivered()]
    sent = [e for e in events if e["type"] == "recipient.sent"]
    rows = {r.id: r for r in recipients(dao, job_id)}
    assert sorted(e["data"]["recipient_id"] for e in sent) == sorted(rows)
    for e in sent:
        row = rows[e["data"]["recipient_id"]]
        assert e["data"] == {"job_id": job_id, "recipient_id": row.id, "to_email": row.to_email,
                             "status": "sent", "error_code": None, "error": None,
                             "attempts": row.attempts, "gmail_message_id": row.gmail_message_id,
                             "message_id": row.message_id, "metadata": {"campaign": "c-7"},
                             "recipient_metadata": None, "test": False}
        assert e["timestamp"].endswith("Z")
    done = [e for e in events if e["type"] == "job.completed"]
    assert [d["data"]["counts"] for d in done] == [{"sent": 5}]
    assert done[0]["data"]["status"] == "completed" and done[0]["data"]["job_id"] == job_id
    ids = [r.headers["webhook-id"] for r in receiver.delivered()]
    assert len(set(ids)) == 6
    forged = receiver.delivered()[0]
    with pytest.raises(WebhookVerificationError):   # the library does check: another secret
        Webhook("whsec_" + base64.b64encode(b"x" * 24).decode()).verify(forged.body,
                                                                       forged.headers)
    pages = hooks.get(f"/api/webhooks/{hook['id']}/deliveries?limit=4",
                      headers={"X-API-Key": key}).json
    assert len(pages["deliveries"]) == 4 and pages["next_before"] is not None
    assert all(d["status"] == "delivered" and d["last_status_code"] == 200 and
               d["attempts"] == 1 for d in pages["deliveries"])
    rest = hooks.get(f"/api/webhooks/{hook['id']}/deliveries?before={pages['next_before']}",
                     headers={"X-API-Key": key}).json
    assert len(rest["deliveries"]) == 2 and rest["next_before"] is None
    scrape = hooks.get("/metrics", headers={"X-API-Key": make_key(operator=True, name="op")})
    text = scrape.get_data(as_text=True)
    assert 'mailjobs_webhook_deliveries_total{outcome="delivered"}' in text
    assert "mailjobs_webhook_oldest_undelivered_seconds 0.0" in text


def test_a_receiver_failing_for_a_while_gets_every_event_retries_spaced_as_configured(
        hooks, hook_settings, dao, key, receiver):
    # 503 with Retry-After: 1, then 500 twice, then it recovers
    answers = {0: (503, {"Retry-After": "1"}), 1: (500, {}), 2: (500, {})}
    receiver.respond = lambda n: answers.get(n, (200, {}))
    hook = endpoint(hooks, key, receiver.url)
    job_id = post(hooks, key, body(3)).json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: len(receiver.events()) == 4, message="3 recipient events + job")
    first = receiver.requests[0].headers["webhook-id"]
    attempts = [r for r in receiver.requests if r.headers["webhook-id"] == first]
    assert [r.status for r in attempts] == [503, 500, 500, 200]   # the same message each time
    gaps = [b.at - a.at for a, b in zip(attempts, attempts[1:], strict=False)]
    # Retry-After (1 s) over the first step (0.3 s), then the schedule's steps
    assert gaps[0] >= 1.0 and gaps[1] >= 0.6 and gaps[2] >= 1.0, gaps
    delivered = receiver.events()
    assert sorted(e["data"].get("recipient_id") or 0 for e in delivered) == sorted(
        [r.id for r in recipients(dao, job_id)] + [0])          # every one, once
    head = hooks.get(f"/api/webhooks/{hook['id']}/deliveries", headers={"X-API-Key": key})
    oldest = head.json["deliveries"][-1]
    assert (oldest["attempts"], oldest["last_status_code"], oldest["status"]) == (4, 200,
                                                                                  "delivered")
    shown = hooks.get(f"/api/webhooks/{hook['id']}", headers={"X-API-Key": key}).json
    assert shown["failing_since"] is None and shown["enabled"]


def test_events_of_one_recipient_arrive_in_order_even_after_a_failed_attempt(
        hooks, hook_settings, dao, key, receiver):
    receiver.respond = lambda n: (500, {}) if n == 0 else (200, {})
    endpoint(hooks, key, receiver.url, events=["recipient.sent", "recipient.unsubscribed"])
    job_id = post(hooks, key, body(1)).json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, job_id)
        rid = recipients(dao, job_id)[0].id
        # the unsubscribe is written while the sent event still waits for its retry
        wait_for(lambda: receiver.requests, message="the first attempt")
        assert dao.unsubscribe(rid, dao.job(job_id).api_key_id) is not None
        wait_for(lambda: len(receiver.events()) == 2, message="both events")
    assert [e["type"] for e in receiver.events()] == ["recipient.sent", "recipient.unsubscribed"]


def test_410_gone_disables_the_endpoint_at_once(hooks, hook_settings, dao, key, receiver):
    receiver.respond = lambda n: (410, {})
    hook = endpoint(hooks, key, receiver.url)
    job_id = post(hooks, key, body(2)).json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: not dao.webhook(hook["id"])["enabled"], message="disabled")
        shown = hooks.get(f"/api/webhooks/{hook['id']}", headers={"X-API-Key": key}).json
        assert "410" in shown["disabled_reason"] and not shown["enabled"]
        assert len(receiver.requests) == 1
        later = post(hooks, key, body(2)).json["job_id"]
        wait_job_done(dao, later)
    with dao.transaction() as cur:   # a disabled endpoint gets no events
        cur.execute("SELECT COUNT(*) FROM webhook_events WHERE job_id = %s", (later,))
        assert cur.fetchone()[0] == 0
    assert len(receiver.requests) == 1


def test_an_endpoint_failing_longer_than_webhook_disable_after_is_disabled_with_the_reason(
        dao, key, receiver, hook_settings):
    settings = hook_settings.with_overrides(webhook_disable_after=1.0,
                                            webhook_retry_schedule="0.2")
    hooks = create_app(settings, dao).test_client()
    receiver.respond = lambda n: (500, {})
    hook = endpoint(hooks, key, receiver.url)
    post(hooks, key, body(1))
    with running(settings, dao):
        wait_for(lambda: not dao.webhook(hook["id"])["enabled"], message="disabled")
    reason = dao.webhook(hook["id"])["disabled_reason"]
    assert "every attempt failed since" in reason and "HTTP 500" in reason
    assert len(receiver.requests) >= 2


def test_retry_of_a_delivery_enables_its_endpoint_and_sends_it_again(
        hooks, hook_settings, dao, key, receiver):
    receiver.respond = lambda n: (410, {}) if n == 0 else (200, {})
    hook = endpoint(hooks, key, receiver.url, events=["job.completed"])
    job_id = post(hooks, key, body(1)).json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: not dao.webhook(hook["id"])["enabled"], message="disabled")
        delivery = hooks.get(f"/api/webhooks/{hook['id']}/deliveries",
                             headers={"X-API-Key": key}).json["deliveries"][0]
        answer = hooks.post(f"/api/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry",
                            headers={"X-API-Key": key})
        assert answer.status_code == 202 and answer.json["status"] == "pending"
        wait_for(lambda: len(receiver.delivered()) == 1, message="delivered on retry")
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivery["webhook_id"]}
    assert dao.webhook(hook["id"])["enabled"]
    missing = hooks.post(f"/api/webhooks/{hook['id']}/deliveries/999999/retry",
                         headers={"X-API-Key": key})
    assert missing.status_code == 404 and missing.json["field"] == "delivery_id"


def test_two_keys_endpoints_never_see_each_others_events(hooks, hook_settings, dao, key,
                                                       make_key):
    other = make_key(name="other")
    with Receiver() as mine, Receiver() as theirs:
        endpoint(hooks, key, mine.url)
        endpoint(hooks, other, theirs.url)
        my_job = post(hooks, key, body(3)).json["job_id"]
        their_job = post(hooks, other, body(2)).json["job_id"]
        with running(hook_settings, dao):
            wait_job_done(dao, my_job)
            wait_job_done(dao, their_job)
            wait_for(lambda: len(mine.events()) == 4 and len(theirs.events()) == 3,
                     message="each key's events")
        assert {e["data"]["job_id"] for e in mine.events()} == {my_job}
        assert {e["data"]["job_id"] for e in theirs.events()} == {their_job}


def test_events_are_batched_up_to_batch_size_in_one_signed_post(hooks, hook_settings, dao,
                                                                 key, receiver):
    settings = hook_settings.with_overrides(webhook_timeout=30.0)
    hook = endpoint(hooks, key, receiver.url, batch_size=100)
    receiver.hold.clear()      # the first POST waits until every event is written
    job_id = post(hooks, key, body(250)).json["job_id"]
    with running(settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: count_rows(dao, "webhook_events") == 251, message="all events")
        receiver.hold.set()
        wait_for(lambda: len(receiver.events()) == 251, message="251 events delivered")
    sizes = [len(r.events) for r in receiver.delivered()]
    assert all(r.body.startswith(b"[") for r in receiver.delivered())
    assert max(sizes) == 100 and sum(sizes) == 251, sizes
    assert len({e["data"].get("recipient_id") for e in receiver.events()}) == 251
    for r in receiver.delivered():
        verified(hook["secret"], r)


def test_a_private_address_is_refused_at_send_time_without_webhook_allow_private(
        dao, key, receiver, hook_settings):
    settings = hook_settings.with_overrides(webhook_allow_private=False)
    hooks = create_app(settings, dao).test_client()
    assert create(hooks, key, receiver.url).status_code == 400   # a literal 127.0.0.1
    # a name is resolved when the request is made: "localhost" is loopback
    url = receiver.url.replace("127.0.0.1", "localhost")
    hook = endpoint(hooks, key, url)
    tried = hooks.post(f"/api/webhooks/{hook['id']}/test", headers={"X-API-Key": key}).json
    assert not tried["delivered"] and "loopback" in tried["error"]
    job_id = post(hooks, key, body(1)).json["job_id"]
    with running(settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: dao.webhook_deliveries(hook["id"], None, 10) and
                 dao.webhook_deliveries(hook["id"], None, 10)[-1]["attempts"] >= 1,
                 message="an attempt")
    assert "refused" in dao.webhook_deliveries(hook["id"], None, 10)[-1]["last_error"]
    assert receiver.requests == []


def test_after_a_rotation_both_secrets_sign_until_the_overlap_ends(dao, key, receiver,
                                                                    hook_settings):
    settings = hook_settings.with_overrides(webhook_rotation_overlap=2)
    hooks = create_app(settings, dao).test_client()
    hook = endpoint(hooks, key, receiver.url)
    rotated = hooks.post(f"/api/webhooks/{hook['id']}/rotate-secret",
                         headers={"X-API-Key": key}).json
    assert rotated["secret"] != hook["secret"] and rotated["secret"].startswith("whsec_")
    tried = hooks.post(f"/api/webhooks/{hook['id']}/test", headers={"X-API-Key": key}).json
    assert tried["delivered"] and tried["status_code"] == 200
    during = receiver.requests[-1]
    assert during.headers["webhook-id"] == tried["webhook_id"]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    for secret in (hook["secret"], rotated["secret"]):
        assert verified(secret, during)["type"] == "webhook.test"
    wait_for(lambda: dao.webhook(hook["id"])["previous_secret"] is None, timeout=10,
             message="the overlap to end")
    hooks.post(f"/api/webhooks/{hook['id']}/test", headers={"X-API-Key": key})
    after = receiver.requests[-1]
    verified(rotated["secret"], after)
    with pytest.raises(WebhookVerificationError):
        verified(hook["secret"], after)


def test_a_runner_killed_between_the_outcome_and_the_delivery_still_delivers_the_event(
        hooks, hook_settings, dao, database, key, receiver):
    hook = endpoint(hooks, key, receiver.url, events=["recipient.sent"])
    receiver.hold.clear()      # the worker's POST gets no answer before it dies
    job_id = post(hooks, key, body(1)).json["job_id"]
    env = {**os.environ, "DATABASE_URL": database.url, "MAIL_TRANSPORT": "null",
           "TOKEN_ENCRYPTION_KEY": hook_settings.token_encryption_key,
           "WEBHOOK_ALLOW_PRIVATE": "1", "WEBHOOK_ALLOW_HTTP": "1", "POLL_INTERVAL": "0.05",
           "WEBHOOK_POLL_INTERVAL": "0.05", "WEBHOOK_LEASE_SECONDS": "2",
           "RECORD_FLUSH_INTERVAL": "0.05", "SENDER_RATE_PER_MINUTE": "0",
           "SENDER_DAILY_CAP": "0", "LOG_LEVEL": "INFO"}
    worker = subprocess.Popen([sys.executable, "-m", "mailjobs.job_runner"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: receiver.requests, timeout=30, message="the worker's POST")
        first = receiver.requests[0].headers["webhook-id"]
        assert dao.recipient_counts(job_id) == {"sent": 1}     # the outcome is recorded
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate(timeout=10)
    receiver.requests.clear()
    receiver.hold.set()
    with running(hook_settings, dao):    # another runner, after the dead one's lease
        wait_for(lambda: receiver.delivered(), timeout=30, message="the event delivered")
        wait_for(lambda: dao.webhook_deliveries(hook["id"], None, 1)[0]["status"] ==
                 "delivered", message="recorded")
    again = receiver.delivered()[0]
    delivery = dao.webhook_deliveries(hook["id"], None, 1)[0]
    assert again.headers["webhook-id"] == first == delivery["msg_id"]   # the same message
    assert verified(hook["secret"], again)["data"]["job_id"] == job_id
    assert delivery["attempts"] == 1     # the killed attempt was never recorded


# --- which changes write events (in their own transaction: read straight from the outbox) ---
def outbox(dao) -> list[dict]:
    import json

    with dao.transaction() as cur:
        cur.execute("SELECT payload FROM webhook_events ORDER BY id")
        return [json.loads(row[0]) for row in cur.fetchall()]


def test_pause_cancel_suppression_bounce_and_complaint_each_write_their_event(
        hooks, hook_settings, dao, key, receiver):
    endpoint(hooks, key, receiver.url)
    headers = {"X-API-Key": key}
    hooks.post("/api/suppressions", json={"email": "user0@example.com"}, headers=headers)
    job_id = post(hooks, key, body(3, send_at="2099-01-01T00:00:00Z",
                                   metadata={"crm": 5})).json["job_id"]
    suppressed = [e for e in outbox(dao) if e["type"] == "recipient.suppressed"]
    assert [(e["data"]["to_email"], e["data"]["status"], e["data"]["metadata"])
            for e in suppressed] == [("user0@example.com", "suppressed", {"crm": 5})]
    assert hooks.post(f"/api/jobs/{job_id}/pause", headers=headers).status_code == 200
    paused = [e["data"] for e in outbox(dao) if e["type"] == "job.paused"]
    assert [(p["job_id"], p["status"], p["paused_by"]) for p in paused] == [
        (job_id, "paused", "operator")]
    assert hooks.post(f"/api/jobs/{job_id}/cancel", headers=headers).status_code == 200
    done = [e["data"] for e in outbox(dao) if e["type"] == "job.completed"]
    assert [(d["status"], d["counts"]) for d in done] == [
        ("cancelled", {"cancelled": 2, "suppressed": 1})]
    # a sent job's recipients: one bounces, one complains
    sent_job = post(hooks, key, body(3)).json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, sent_job)
    rows = [r for r in recipients(dao, sent_job) if r.status == "sent"]
    sender = dao.job(sent_job).sender_email
    dao.record_bounce(sender, "g-1", rows[0].message_id, "hard", "bounce_5xx", "550 no such user")
    dao.record_bounce(sender, "g-2", rows[1].message_id, "complaint", None, "abuse report")
    events = {e["type"]: e["data"] for e in outbox(dao)}
    assert (events["recipient.bounced"]["recipient_id"], events["recipient.bounced"]["status"],
            events["recipient.bounced"]["error_code"]) == (rows[0].id, "bounced", "bounce_5xx")
    assert (events["recipient.complained"]["recipient_id"],
            events["recipient.complained"]["error_code"]) == (rows[1].id, "complaint")


def test_metadata_of_a_job_must_be_an_object_of_at_most_4096_bytes(client, key, dao):
    for metadata in (["a"], {"x": "y" * 5000}):
        answer = post(client, key, body(1, metadata=metadata))
        assert answer.status_code == 400 and answer.json["field"] == "metadata", answer.json
    assert count_rows(dao, "jobs") == 0


def test_metadata_of_a_recipient_must_be_an_object_within_metadata_max_bytes(dao, key):
    client = create_app(dao.settings.with_overrides(metadata_max_bytes=64), dao).test_client()
    for bad in (["a"], "x", 3, {"x": "y" * 60}):
        payload = body(3)
        payload["recipients"][2]["metadata"] = bad
        answer = post(client, key, payload)
        assert answer.status_code == 400, answer.json
        assert answer.json["field"] == "recipients[2].metadata", answer.json
    answer = post(client, key, body(1, metadata={"x": "y" * 60}))   # the same budget for a job
    assert answer.status_code == 400 and answer.json["field"] == "metadata"
    assert count_rows(dao, "jobs") == 0 and count_rows(dao, "job_recipients") == 0


def test_metadata_comes_back_in_the_job_the_listings_the_export_and_every_event(
        hooks, hook_settings, dao, key, receiver):
    import csv
    import io

    endpoint(hooks, key, receiver.url)
    payload = body(2, metadata={"campaign": "c-7"})
    payload["recipients"][0]["metadata"] = {"crm_id": 17, "tags": ["a", "=b"]}
    answer = post(hooks, key, payload)
    assert answer.status_code == 202, answer.json
    job_id = answer.json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: len(receiver.events()) == 3, message="2 recipient events + job")
    h = {"X-API-Key": key}
    assert hooks.get(f"/api/jobs/{job_id}", headers=h).json["metadata"] == {"campaign": "c-7"}
    listed = hooks.get(f"/api/jobs/{job_id}/recipients", headers=h).json["recipients"]
    assert [r["metadata"] for r in listed] == [{"crm_id": 17, "tags": ["a", "=b"]}, None]
    failed = hooks.get(f"/api/jobs/{job_id}/recipients?status=sent", headers=h).json
    assert failed["recipients"][0]["metadata"] == {"crm_id": 17, "tags": ["a", "=b"]}
    traced = hooks.get("/api/recipients?email=user0@example.com", headers=h).json
    assert traced["recipients"][0]["metadata"] == {"crm_id": 17, "tags": ["a", "=b"]}
    rows = list(csv.DictReader(io.StringIO(
        hooks.get(f"/api/jobs/{job_id}/recipients.csv", headers=h).get_data(as_text=True))))
    assert [json.loads(r["metadata"]) if r["metadata"] else None for r in rows] == [
        {"crm_id": 17, "tags": ["a", "=b"]}, None]
    by_recipient = {e["data"].get("to_email"): e["data"] for e in receiver.events()}
    assert by_recipient["user0@example.com"]["recipient_metadata"] == {"crm_id": 17,
                                                                       "tags": ["a", "=b"]}
    assert by_recipient["user1@example.com"]["recipient_metadata"] is None
    assert all(d["metadata"] == {"campaign": "c-7"} for d in by_recipient.values())


def test_events_of_a_test_keys_job_say_test_true_and_a_real_keys_false(
        hooks, hook_settings, dao, key, receiver, tmp_path):
    from mailjobs import api_keys

    tester = api_keys.create_key(dao, "ci", ["ops@example.com"], test_mode="null").key
    endpoint(hooks, tester, receiver.url)
    with Receiver() as real_receiver:
        endpoint(hooks, key, real_receiver.url)
        test_job = post(hooks, tester, body(2)).json["job_id"]
        real_job = post(hooks, key, body(1)).json["job_id"]
        with running(hook_settings, dao):
            wait_job_done(dao, test_job)
            wait_job_done(dao, real_job)
            wait_for(lambda: len(receiver.events()) == 3 and len(real_receiver.events()) == 2,
                     message="every event of both jobs")
        assert {e["data"]["test"] for e in real_receiver.events()} == {False}
    events = receiver.events()
    assert {e["type"] for e in events} == {"recipient.sent", "job.completed"}
    assert all(e["data"]["test"] is True for e in events)


def test_the_cli_lists_endpoints_and_deliveries_and_retries_one(hooks, hook_settings, dao, key,
                                                                receiver, run):
    import json

    receiver.respond = lambda n: (410, {}) if n == 0 else (200, {})
    hook = endpoint(hooks, key, receiver.url, events=["job.completed"])
    job_id = post(hooks, key, body(1)).json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: not dao.webhook(hook["id"])["enabled"], message="disabled")
        table = run("webhooks", "list").output
        assert receiver.url in table and "NO" in table and "410" in table
        listed = json.loads(run("webhooks", "deliveries", str(hook["id"]), "--json").output)
        delivery = listed["deliveries"][0]
        assert (delivery["status"], delivery["last_status_code"]) == ("pending", 410)
        retried = run("webhooks", "retry", str(hook["id"]), str(delivery["id"]))
        assert retried.exit_code == 0 and "due now" in retried.output
        wait_for(lambda: receiver.delivered(), message="delivered after the retry")
    missing = run("webhooks", "retry", str(hook["id"]), "999999")
    assert missing.exit_code == 1 and "no delivery 999999" in missing.output


def test_every_expired_recipient_gets_one_recipient_failed_event(hooks, hook_settings, dao, key,
                                                                 receiver):
    from datetime import UTC, datetime, timedelta

    endpoint(hooks, key, receiver.url, events=["recipient.failed"])
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    job_id = post(hooks, key, body(8, expires_at=expires.isoformat())).json["job_id"]
    settings = hook_settings.with_overrides(sender_rate_per_minute=60, sender_burst_seconds=1.0)
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed_with_errors"
    expired = sorted(r.id for r in recipients(dao, job_id) if r.status == "expired")
    events = [e["data"] for e in outbox(dao)]
    assert expired and sorted(e["recipient_id"] for e in events) == expired
    assert {(e["status"], e["error_code"]) for e in events} == {("expired", "expired")}


def test_the_dashboard_lists_endpoints_and_deliveries_and_sends_one_again(
        hooks, hook_settings, dao, key, receiver, make_key):
    from test_dashboard import login

    receiver.respond = lambda n: (410, {}) if n == 0 else (200, {})
    hook = endpoint(hooks, key, receiver.url, events=["job.completed"],
                    description="<b>crm</b>")
    job_id = post(hooks, key, body(1)).json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: not dao.webhook(hook["id"])["enabled"], message="disabled")
        login(hooks, make_key(senders=[], operator=True, name="ops"))
        listing = hooks.get("/dashboard/webhooks").text
        assert receiver.url in listing and "410 Gone" in listing
        assert "&lt;b&gt;crm&lt;/b&gt;" in listing and "<b>crm</b>" not in listing
        page = hooks.get(f"/dashboard/webhooks/{hook['id']}").text
        delivery = dao.webhook_deliveries(hook["id"], None, 1)[0]
        assert delivery["msg_id"] in page and "HTTP 410" in page
        sent = hooks.post(f"/dashboard/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry")
        assert sent.status_code == 302
        wait_for(lambda: receiver.delivered(), message="delivered after the retry")
    assert hooks.get("/dashboard/webhooks/999999").status_code == 404


def test_retention_deletes_events_delivered_before_retention_days_and_keeps_the_rest(
        hooks, hook_settings, dao, key, receiver):
    from mailjobs import retention

    receiver.respond = lambda n: (200, {}) if n < 3 else (500, {})
    hook = endpoint(hooks, key, receiver.url, events=["recipient.sent"])
    job_id = post(hooks, key, body(4)).json["job_id"]
    with running(hook_settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: len(receiver.requests) >= 4, message="3 delivered, 1 failing")
    deliveries = dao.webhook_deliveries(hook["id"], None, 10)
    delivered = sorted(d["id"] for d in deliveries if d["status"] == "delivered")
    assert len(delivered) == 3
    with dao.transaction() as cur:   # two of them long ago
        cur.execute("UPDATE webhook_deliveries SET delivered_at = delivered_at - INTERVAL 100 DAY"
                    " WHERE id IN (%s, %s)", delivered[:2])
    settings = hook_settings.with_overrides(purge_batch=1)
    assert retention.purge(settings, dao, dry_run=True).counts["webhook_events_deleted"] == 2
    assert retention.purge(settings, dao).counts["webhook_events_deleted"] == 2
    left = dao.webhook_deliveries(hook["id"], None, 10)
    assert sorted(d["id"] for d in left) == sorted(
        d["id"] for d in deliveries if d["id"] not in delivered[:2])
    assert count_rows(dao, "webhook_events") == 2     # the recent one and the pending one


def test_a_sender_whose_grant_is_revoked_pauses_its_jobs_with_a_job_paused_event_each(
        hooks, dao, key, receiver):
    endpoint(hooks, key, receiver.url, events=["job.paused"])
    jobs = [post(hooks, key, body(2)).json["job_id"] for _ in range(2)]
    done = post(hooks, key, body(1)).json["job_id"]
    dao.control_job(done, "cancel", lambda state: Decision("cancelled", None, "test", True))
    paused = dao.pause_sender("ops@example.com", "auth_revoked", "invalid_grant", "sender_auth")
    assert paused == 2
    events = [e["data"] for e in outbox(dao) if e["type"] == "job.paused"]
    assert sorted((e["job_id"], e["paused_by"], e["reason"]) for e in events) == [
        (j, "sender_auth", "invalid_grant") for j in jobs]


@pytest.fixture()
def tls_receiver(tmp_path, monkeypatch):
    """The receiver over TLS with a certificate for "localhost" that this process trusts
    (SSL_CERT_FILE), so the name check of a connection made to the resolved address is real."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    with Receiver() as r:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        r.server.socket = context.wrap_socket(r.server.socket, server_side=True)
        r.url = r.url.replace("http://127.0.0.1", "https://localhost")
        yield r


def test_https_receivers_are_reached_at_the_checked_address_under_their_own_name(
        dao, key, tls_receiver, hook_settings):
    settings = hook_settings.with_overrides(webhook_allow_http=False)
    hooks = create_app(settings, dao).test_client()
    hook = endpoint(hooks, key, tls_receiver.url, events=["recipient.sent"])
    job_id = post(hooks, key, body(2)).json["job_id"]
    with running(settings, dao):
        wait_job_done(dao, job_id)
        wait_for(lambda: len(tls_receiver.events()) == 2, message="both events over TLS")
    assert all(r.headers["host"].startswith("localhost:") for r in tls_receiver.delivered())
    verified(hook["secret"], tls_receiver.delivered()[0])
    # the same server under an address its certificate does not name: refused
    by_address = endpoint(hooks, key, tls_receiver.url.replace("localhost", "127.0.0.1"))
    tried = hooks.post(f"/api/webhooks/{by_address['id']}/test", headers={"X-API-Key": key}).json
    assert not tried["delivered"] and "doesn't match 'localhost'" in tried["error"]


def test_a_failing_and_hanging_endpoint_never_holds_up_another_endpoints_events(
        hooks, hook_settings, dao, key, make_key):
    """Head-of-line blocking: one runner with one webhook slot (WEBHOOK_CONCURRENCY=1). Endpoint
    A answered 500 once and now hangs (its retry is held for the whole WEBHOOK_TIMEOUT); while
    that retry is in flight, endpoint B (another key's) still receives every event of its job."""
    other = make_key(senders=["*@example.com"], name="other")
    settings = hook_settings.with_overrides(webhook_concurrency=1, webhook_timeout=60.0,
                                            webhook_lease_seconds=300,
                                            webhook_retry_schedule="0.2,0.2,0.2")
    with Receiver() as a, Receiver() as b:
        a.respond = lambda n: (500, {})
        endpoint(hooks, key, a.url)
        endpoint(hooks, other, b.url)
        first = post(hooks, key, body(1)).json["job_id"]
        with running(settings, dao):
            try:
                wait_job_done(dao, first)
                wait_for(lambda: len(a.requests) >= 1, message="A's first POST (500)")
                a.hold.clear()                     # from now on A does not answer
                wait_for(lambda: len(a.requests) >= 2, message="A's retry, held")
                held = len(a.requests)
                job = post(hooks, other, body(5)).json["job_id"]
                wait_job_done(dao, job)
                wait_for(lambda: len(b.events()) == 6, message="B's 5 recipient events + job")
                assert len(a.requests) == held and not a.delivered()   # A is still hanging
            finally:
                a.hold.set()
    assert {e["data"]["job_id"] for e in b.events()} == {job}
