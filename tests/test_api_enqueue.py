"""POST /api/jobs/send_template_emails against a real MariaDB: what is stored, and what is not."""
from __future__ import annotations

import json

import pytest

from runner_helpers import count_rows

URL = "/api/jobs/send_template_emails"


def body(n: int = 2, **changes):
    b = {"sender_email": "ops@example.com", "from_name": "Ops", "reply_to": "help@example.com",
         "template": {"subject": "Hi {{ name }}", "html": "<p>Hello {{ name }} from {{ company }}</p>",
                      "text": "Hello {{ name }}"},
         "variables": {"company": "Acme"},
         "recipients": [{"email": f"user{i}@example.com", "name": f"User {i}",
                         "variables": {"n": i}} for i in range(n)]}
    b.update(changes)
    return b


def post(client, key, payload, **headers):
    headers = {"X-API-Key": key, **headers}
    if isinstance(payload, (bytes, str)):
        return client.post(URL, data=payload, content_type="application/json", headers=headers)
    return client.post(URL, json=payload, headers=headers)


def assert_nothing_written(dao):
    assert count_rows(dao, "jobs") == 0
    assert count_rows(dao, "job_recipients") == 0


def test_post_stores_the_job_and_every_recipient_and_answers_202(client, key, dao):
    r = post(client, key, body(3))
    assert r.status_code == 202
    job_id = r.json["job_id"]
    assert r.json == {"job_id": job_id, "status": "queued", "recipients": 3,
                      "duplicates_removed": 0, "suppressed": 0,
                      "status_url": f"/api/jobs/{job_id}",
                      "warnings": [r.json["warnings"][0]],  # no runner in this test
                      "estimate": r.json["estimate"],         # test_estimates.py
                      "test": False}                          # test_test_keys.py
    assert r.json["estimate"]["recipients"] == 3
    assert r.headers["Location"] == f"/api/jobs/{job_id}"
    with dao.transaction() as cur:
        cur.execute("SELECT to_email, name, variables, status, attempts FROM job_recipients "
                    "WHERE job_id = %s ORDER BY id", (job_id,))
        rows = cur.fetchall()
    assert [(e, n, json.loads(v), s, a) for e, n, v, s, a in rows] == [
        (f"user{i}@example.com", f"User {i}", {"n": i}, "queued", 0) for i in range(3)]
    job = dao.job(job_id)
    assert (job.status, job.total, job.sender_email, job.variables) == \
        ("queued", 3, "ops@example.com", {"company": "Acme"})
    assert job.subject_template == "Hi {{ name }}"


def test_recipients_are_deduplicated_case_insensitively(client, key, dao):
    b = body(2)
    b["recipients"].append({"email": "USER0@Example.com", "name": "Again"})
    r = post(client, key, b)
    assert r.status_code == 202
    assert (r.json["recipients"], r.json["duplicates_removed"]) == (2, 1)
    assert count_rows(dao, "job_recipients") == 2


@pytest.mark.parametrize("mutate, status, code, field", [
    (lambda b: b.update(unknown=1), 400, "validation_error", "unknown"),
    (lambda b: b.pop("sender_email"), 400, "validation_error", "sender_email"),
    (lambda b: b["recipients"][1].update(email="not-an-address"), 400, "validation_error",
     "recipients[1].email"),
    (lambda b: b["recipients"][0].update(colour="red"), 400, "validation_error",
     "recipients[0].colour"),
    (lambda b: b.update(recipients=[]), 400, "validation_error", "recipients"),
    (lambda b: b["template"].update(subject="Hi\r\nBcc: victim@example.com"), 400,
     "validation_error", "template.subject"),
    (lambda b: b.update(from_name="Ops\nBcc: x@example.com"), 400, "validation_error", "from_name"),
    (lambda b: b.update(reply_to="a@example.com\r\nBcc: x@example.com"), 400, "validation_error",
     "reply_to"),
    (lambda b: b["recipients"][1].update(name="B\r\nX-Evil: 1"), 400, "validation_error",
     "recipients[1].name"),
    (lambda b: b["template"].update(html="<p>{% if %}</p>"), 400, "template_error", "template.html"),
    (lambda b: b["template"].update(text="Hi {{ missing_var }}"), 400, "missing_variables",
     "recipients[0].variables"),
    (lambda b: b["template"].update(html=None, text=None), 400, "validation_error", "template"),
    (lambda b: b.update(sender_email="ceo@elsewhere.example"), 403, "sender_not_allowed",
     "sender_email"),
])
def test_each_bad_request_names_its_field_and_writes_nothing(client, key, dao, mutate, status,
                                                            code, field):
    b = body(3)
    mutate(b)
    r = post(client, key, b)
    assert r.status_code == status, r.json
    assert r.json["error"] == code
    assert r.json["field"] == field
    assert r.json["message"]
    assert_nothing_written(dao)


def test_variable_missing_for_one_recipient_only_names_that_recipient(client, key, dao):
    b = body(3)
    b["template"]["text"] = "Your code is {{ n }}"
    del b["recipients"][2]["variables"]
    r = post(client, key, b)
    assert r.status_code == 400
    assert r.json["field"] == "recipients[2].variables"
    assert "n" in r.json["message"]
    assert_nothing_written(dao)


def test_job_wide_variables_are_defaults_for_every_recipient(client, key, dao):
    b = body(2)
    b["template"]["text"] = "{{ greeting }} {{ n }}"
    b["variables"]["greeting"] = "Hello"
    assert post(client, key, b).status_code == 202


def test_several_errors_are_listed_up_to_twenty(client, key, dao):
    b = body(30)
    for r in b["recipients"]:
        r["email"] = "broken"
    r = post(client, key, b)
    assert r.status_code == 400
    assert r.json["field"] == "recipients[0].email"
    assert len(r.json["errors"]) == 20
    assert r.json["errors"][19]["field"] == "recipients[19].email"


def test_missing_and_unknown_api_keys_are_401(client, dao):
    r = client.post(URL, json=body())
    assert (r.status_code, r.json["field"]) == (401, "X-API-Key")
    r = post(client, "mj_deadbeef_notarealsecret", body())
    assert (r.status_code, r.json["error"]) == (401, "unauthorized")
    assert_nothing_written(dao)


def test_a_revoked_key_is_refused(client, key, dao):
    prefix = key.split("_")[1]
    assert dao.revoke_api_key(prefix)
    assert post(client, key, body()).status_code == 401


def test_a_key_with_a_wrong_secret_is_refused(client, key, dao):
    assert post(client, key[:-2] + "xx", body()).status_code == 401


def test_non_json_body_is_415(client, key, dao):
    r = client.post(URL, data="a=b", content_type="application/x-www-form-urlencoded",
                    headers={"X-API-Key": key})
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (415, "unsupported_media_type", "Content-Type")
    assert_nothing_written(dao)


def test_malformed_json_is_400(client, key, dao):
    r = post(client, key, '{"sender_email": "ops@example.com", ')
    assert (r.status_code, r.json["error"]) == (400, "invalid_json")
    assert_nothing_written(dao)


def test_body_over_max_request_bytes_is_413(dao):
    from mailjobs.api_server import create_app

    client = create_app(dao.settings.with_overrides(max_request_bytes=2000), dao).test_client()
    from mailjobs.api_keys import create_key
    key = create_key(dao, "t", ["*"]).key
    r = post(client, key, body(100))
    assert (r.status_code, r.json["error"]) == (413, "payload_too_large")
    assert_nothing_written(dao)


def test_more_recipients_than_the_limit_is_400(dao):
    from mailjobs.api_keys import create_key
    from mailjobs.api_server import create_app

    client = create_app(dao.settings.with_overrides(max_recipients_per_job=5), dao).test_client()
    key = create_key(dao, "t", ["*"]).key
    r = post(client, key, body(6))
    assert (r.status_code, r.json["field"]) == (400, "recipients")
    assert "at most 5" in r.json["message"]
    assert post(client, key, body(5)).status_code == 202


def test_idempotent_replay_returns_the_first_answer_and_creates_nothing(client, key, dao):
    payload = json.dumps(body(3))
    first = post(client, key, payload, **{"Idempotency-Key": "order-42"})
    again = post(client, key, payload, **{"Idempotency-Key": "order-42"})
    assert first.status_code == again.status_code == 202
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count_rows(dao, "jobs") == 1
    assert count_rows(dao, "job_recipients") == 3


def test_same_idempotency_key_with_another_body_is_422(client, key, dao):
    assert post(client, key, body(3), **{"Idempotency-Key": "k1"}).status_code == 202
    r = post(client, key, body(4), **{"Idempotency-Key": "k1"})
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (422, "idempotency_key_reused", "Idempotency-Key")
    assert count_rows(dao, "job_recipients") == 3


def test_idempotency_keys_are_scoped_to_the_api_key(client, key, make_key, dao):
    other = make_key(senders=["*"])
    a = post(client, key, body(1), **{"Idempotency-Key": "same"})
    b = post(client, other, body(1), **{"Idempotency-Key": "same"})
    assert a.status_code == b.status_code == 202
    assert a.json["job_id"] != b.json["job_id"]


def test_injection_strings_in_every_field_are_stored_verbatim(client, make_key, dao):
    key = make_key(senders=["*"])
    evil = "x'); DROP TABLE jobs; -- \" \\ %s %(a)s"
    b = {"sender_email": "o'brien@example.com", "from_name": evil, "reply_to": "r'x@example.com",
         "template": {"subject": evil + " {{ name }}", "html": "<p>" + evil + "</p>", "text": evil},
         "variables": {evil: evil},
         "recipients": [{"email": "a'--@example.com", "name": evil, "variables": {"k": evil}}]}
    r = post(client, key, b)
    assert r.status_code == 202, r.json
    job = dao.job(r.json["job_id"])
    assert (job.from_name, job.subject_template, job.text_template, job.variables) == \
        (evil, evil + " {{ name }}", evil, {evil: evil})
    assert job.sender_email == "o'brien@example.com"
    (rec,) = dao.recipients_page(job.id, None, 0, 10)
    assert (rec.to_email, rec.name, rec.variables) == ("a'--@example.com", evil, {"k": evil})
    assert count_rows(dao, "jobs") == 1


def test_a_100000_recipient_job_is_stored_completely(client, make_key, dao):
    key = make_key(senders=["*"])
    b = body(100_000)
    r = post(client, key, b)
    assert r.status_code == 202
    assert r.json["recipients"] == 100_000
    assert dao.recipient_counts(r.json["job_id"]) == {"queued": 100_000}
    with dao.transaction() as cur:
        cur.execute("SELECT COUNT(DISTINCT to_email) FROM job_recipients WHERE job_id = %s",
                    (r.json["job_id"],))
        assert cur.fetchone()[0] == 100_000


def test_non_finite_numbers_in_variables_are_400_not_500(client, key, dao):
    r = post(client, key, '{"sender_email": "ops@example.com", "template": {"subject": "s", '
             '"text": "t"}, "variables": {"n": 1e400}, "recipients": [{"email": '
             '"a@example.com"}]}')
    assert (r.status_code, r.json["field"]) == (400, "variables")
    b = body(1)
    raw = json.dumps(b).replace('"variables": {"n": 0}', '"variables": {"n": NaN}')
    r = post(client, key, raw)
    assert (r.status_code, r.json["field"]) == (400, "recipients[0].variables")
    assert_nothing_written(dao)


def test_a_send_at_beyond_the_calendar_is_400_not_500(client, key, dao):
    r = post(client, key, body(1, send_at="9999-12-31T23:30:00-05:00"))
    assert (r.status_code, r.json["field"]) == (400, "send_at")
    assert_nothing_written(dao)


def test_idempotency_keys_are_case_sensitive(client, key, dao):
    a = post(client, key, body(1), **{"Idempotency-Key": "Order-1"})
    b = post(client, key, body(2), **{"Idempotency-Key": "order-1"})
    assert (a.status_code, b.status_code) == (202, 202)
    assert a.json["job_id"] != b.json["job_id"]


def test_malformed_json_is_invalid_json_on_every_endpoint(client, key, dao):
    job_id = post(client, key, body(1)).json["job_id"]
    r = client.post(f"/api/jobs/{job_id}/retry", data="{", content_type="application/json",
                    headers={"X-API-Key": key})
    assert (r.status_code, r.json["error"]) == (400, "invalid_json")
    r = client.post("/api/templates", data="{", content_type="application/json",
                    headers={"X-API-Key": key})
    assert (r.status_code, r.json["error"]) == (400, "invalid_json")


def test_405_says_what_is_allowed(client, key):
    r = client.put("/api/jobs", headers={"X-API-Key": key})
    assert r.status_code == 405
    assert "GET" in r.headers["Allow"]
    assert r.json["error"] == "method_not_allowed"


def test_large_requests_beyond_the_concurrency_limit_wait_then_get_503(dao, monkeypatch):
    """Room for one large POST at a time: while one is being stored, a second one waits for
    the slot and (with no wait allowed here) is refused with 503 busy, storing nothing."""
    import threading

    from mailjobs import api_server
    from mailjobs.api_keys import create_key
    from mailjobs.web import send

    s = dao.settings.with_overrides(large_enqueue_concurrency=1, large_body_bytes=100,
                                    db_pool_timeout=0.0)
    app = api_server.create_app(s, dao)
    key = create_key(dao, "t", ["*"]).key
    entered, release = threading.Event(), threading.Event()
    real = send.enqueue

    def held_enqueue(*args, **kwargs):  # keeps the first request inside its slot
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(send, "enqueue", held_enqueue)
    first = {}
    t = threading.Thread(target=lambda: first.setdefault("r", post(app.test_client(), key,
                                                                   body(3))))
    t.start()
    assert entered.wait(10)
    second = post(app.test_client(), key, body(3))
    assert (second.status_code, second.json["error"]) == (503, "busy")
    assert second.headers["Retry-After"] == "5"
    release.set()
    t.join(10)
    assert first["r"].status_code == 202
    assert count_rows(dao, "jobs") == 1


def test_an_enqueue_takes_few_round_trips(client, key, dao):
    """A far database pays every round trip (issue 12): storing a job is the key check (its
    read and COMMIT in one packet: 1), and one transaction whose statements (the send-as read,
    job, recipients, suppressions, the stored job read back, the estimate's plan) go in one
    packet, then its COMMIT (2). 12 before issue 12, 10 before the packets; a ping may add
    one."""
    from mailjobs.db.guard import ROUND_TRIPS

    dao.runner_heartbeat({"id": "r-live", "host": "h", "pid": 1, "kind": "worker",
                          "state": "idle", "job": None, "sent": 0, "failed": 0})
    assert post(client, key, body(3)).status_code == 202   # the pool, the key's touch, warm
    before = ROUND_TRIPS.commands
    r = post(client, key, body(100))
    assert r.status_code == 202 and r.json["warnings"] == [] and r.json["suppressed"] == 0
    assert ROUND_TRIPS.commands - before <= 4
