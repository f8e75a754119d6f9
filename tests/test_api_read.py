"""Reading jobs back: status and counts, keyset pages, and who may see what."""
from __future__ import annotations

from test_api_enqueue import body, post


def h(key):
    return {"X-API-Key": key}


def test_job_shows_status_totals_and_counts(client, key):
    job_id = post(client, key, body(3)).json["job_id"]
    r = client.get(f"/api/jobs/{job_id}", headers=h(key))
    assert r.status_code == 200
    assert r.json["status"] == "queued"
    assert r.json["total"] == 3
    assert r.json["counts"] == {"queued": 3}
    assert r.json["created_at"].endswith(("Z", "+00:00"))  # UTC, explicit


def test_a_key_cannot_read_another_keys_job(client, key, make_key):
    job_id = post(client, key, body(1)).json["job_id"]
    other = make_key(senders=["*"])
    for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/recipients"):
        r = client.get(path, headers=h(other))
        assert (r.status_code, r.json["error"]) == (404, "not_found")
    assert client.get("/api/jobs", headers=h(other)).json["jobs"] == []


def test_an_operator_key_sees_every_job(client, key, make_key):
    job_id = post(client, key, body(1)).json["job_id"]
    op = make_key(senders=[], operator=True)
    assert client.get(f"/api/jobs/{job_id}", headers=h(op)).status_code == 200
    assert [j["id"] for j in client.get("/api/jobs", headers=h(op)).json["jobs"]] == [job_id]


def test_a_key_may_not_send_as_a_sender_it_is_not_allowed(client, make_key):
    key = make_key(senders=["*@example.org"])
    assert post(client, key, body(1, sender_email="news@example.org")).status_code == 202
    r = post(client, key, body(1, sender_email="news@example.com"))
    assert (r.status_code, r.json["field"]) == (403, "sender_email")


def test_jobs_are_listed_newest_first_in_keyset_pages(client, key):
    ids = [post(client, key, body(1)).json["job_id"] for _ in range(5)]
    first = client.get("/api/jobs?limit=2", headers=h(key)).json
    assert [j["id"] for j in first["jobs"]] == ids[::-1][:2]
    second = client.get(f"/api/jobs?limit=2&before={first['next_before']}", headers=h(key)).json
    assert [j["id"] for j in second["jobs"]] == ids[::-1][2:4]


def test_recipients_are_paged_by_id_and_filtered_by_status(client, key, dao):
    job_id = post(client, key, body(5)).json["job_id"]
    with dao.transaction() as cur:
        cur.execute("UPDATE job_recipients SET status='failed', error_code='gmail_400', "
                    "error='Gmail 400 invalidArgument: Invalid To header' "
                    "WHERE job_id=%s AND to_email IN ('user1@example.com','user3@example.com',"
                    "'user4@example.com')", (job_id,))
    url = f"/api/jobs/{job_id}/recipients?status=failed&limit=2"
    page1 = client.get(url, headers=h(key)).json
    assert [r["to_email"] for r in page1["recipients"]] == ["user1@example.com", "user3@example.com"]
    assert page1["recipients"][0]["error_code"] == "gmail_400"
    page2 = client.get(url + f"&after={page1['next_after']}", headers=h(key)).json
    assert [r["to_email"] for r in page2["recipients"]] == ["user4@example.com"]
    assert page2["next_after"] is None
    counts = client.get(f"/api/jobs/{job_id}", headers=h(key)).json["counts"]
    assert counts == {"queued": 2, "failed": 3}


def test_bad_query_parameters_are_400_with_the_field(client, key):
    job_id = post(client, key, body(1)).json["job_id"]
    for query, field in (("limit=0", "limit"), ("limit=abc", "limit"), ("status=lost", "status"),
                         ("after=-1", "after")):
        r = client.get(f"/api/jobs/{job_id}/recipients?{query}", headers=h(key))
        assert (r.status_code, r.json["field"]) == (400, field), query


def test_unknown_routes_answer_json(client, key):
    r = client.get("/api/nothing", headers=h(key))
    assert r.status_code == 404
    assert r.json["error"] == "not_found"


def test_healthz_reports_the_database(client):
    r = client.get("/healthz")
    assert r.status_code == 200  # this app runs no runner and expects none
    assert (r.json["status"], r.json["database"], r.json["runners"]) == ("ok", "ok", 0)


def test_openapi_describes_every_endpoint_from_the_request_models(client, app):
    import re

    doc = client.get("/openapi.json").json
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        if rule.rule.startswith("/dashboard"):
            continue  # the operators' HTML dashboard is for browsers, deliberately not in the spec
        if rule.rule.startswith("/u/"):
            continue  # one-click unsubscribe pages are for mail recipients, not API clients
        path = re.sub(r"<(?:int:|path:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            if "<any(" in path:
                for action in re.search(r"<any\(([^)]*)\):\w+>", path).group(1).split(","):
                    served.add((re.sub(r"<any\([^)]*\):\w+>", action.strip(), path), method))
            else:
                served.add((path, method))
    assert served == documented
    req = doc["components"]["schemas"]["SendTemplateEmailsIn"]
    assert set(req["required"]) == {"sender_email", "recipients"}  # and template or template_name
    assert req["additionalProperties"] is False


def test_an_exactly_full_last_page_says_there_is_no_next_one(client, key, dao):
    """Regression: a page holding exactly `limit` rows answered a cursor to an empty page."""
    ids = [post(client, key, body(1)).json["job_id"] for _ in range(4)]
    first = client.get("/api/jobs?limit=2", headers=h(key)).json
    last = client.get(f"/api/jobs?limit=2&before={first['next_before']}", headers=h(key)).json
    assert [j["id"] for j in last["jobs"]] == ids[::-1][2:] and last["next_before"] is None
    job_id = ids[0]
    full = client.get(f"/api/jobs/{job_id}/recipients?limit=1", headers=h(key)).json
    assert len(full["recipients"]) == 1 and full["next_after"] is None


def test_next_attempt_at_is_shown_only_where_it_means_due(client, key, dao):
    job_id = post(client, key, body(3)).json["job_id"]
    with dao.transaction() as cur:   # a sent one keeps its old lease time in the row
        cur.execute("UPDATE job_recipients SET status='sent', sent_at=UTC_TIMESTAMP(6), "
                    "next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL 60 SECOND "
                    "WHERE job_id=%s AND to_email='user0@example.com'", (job_id,))
        cur.execute("UPDATE job_recipients SET status='retrying', "
                    "next_attempt_at = UTC_TIMESTAMP(6) + INTERVAL 60 SECOND "
                    "WHERE job_id=%s AND to_email='user1@example.com'", (job_id,))
    rows = {r["to_email"]: r for r in
            client.get(f"/api/jobs/{job_id}/recipients", headers=h(key)).json["recipients"]}
    assert rows["user0@example.com"]["next_attempt_at"] is None           # sent
    assert rows["user1@example.com"]["next_attempt_at"] is not None       # retrying: due then
    assert rows["user2@example.com"]["next_attempt_at"] is not None       # queued


def test_a_retry_says_how_many_recipients_it_queued_again(client, key, dao):
    job_id = post(client, key, body(3)).json["job_id"]
    with dao.transaction() as cur:
        cur.execute("UPDATE job_recipients SET status='failed', error_code='gmail_400', "
                    "error='x' WHERE job_id=%s AND to_email <> 'user0@example.com'", (job_id,))
    r = client.post(f"/api/jobs/{job_id}/retry", headers=h(key))
    assert r.status_code == 200 and r.json["requeued"] == 2, r.json
    assert r.json["counts"] == {"queued": 3}


def test_a_job_whose_recipients_all_expired_names_expired_in_its_errors(client, key, dao):
    job_id = post(client, key, body(2)).json["job_id"]
    with dao.transaction() as cur:
        cur.execute("UPDATE jobs SET expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND "
                    "WHERE id=%s", (job_id,))
    for expired in dao.expire_due_jobs():
        dao.finish_job_if_done(expired)
    job = client.get(f"/api/jobs/{job_id}", headers=h(key)).json
    assert job["status"] == "failed" and job["counts"] == {"expired": 2}    # none sent
    assert [(e["error_code"], e["count"]) for e in job["errors"]] == [("expired", 2)]


def test_the_job_list_has_each_jobs_counts(client, key, dao):
    a = post(client, key, body(3)).json["job_id"]
    b = post(client, key, body(1)).json["job_id"]
    with dao.transaction() as cur:
        cur.execute("UPDATE job_recipients SET status='sent' WHERE job_id=%s "
                    "AND to_email='user0@example.com'", (a,))
    listed = {j["id"]: j for j in client.get("/api/jobs", headers=h(key)).json["jobs"]}
    assert listed[a]["counts"] == {"queued": 2, "sent": 1}
    assert listed[b]["counts"] == {"queued": 1}
    assert listed[a]["errors"] is None


def _bytes_sent_by_the_server(dao) -> int:
    with dao.transaction() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Bytes_sent'")
        return int(cur.fetchone()[1])


def test_listing_jobs_does_not_read_their_template_bodies(client, key, dao):
    """Three jobs of 1 MB html and 1 MB text each: the list answers from the columns it shows,
    so the database sends the API kilobytes, not the 6 MB of bodies."""
    big = body(1)
    big["template"]["html"] = "<p>" + "x" * 1_000_000 + "</p>"
    big["template"]["text"] = "y" * 1_000_000
    ids = [post(client, key, big).json["job_id"] for _ in range(3)]
    before = _bytes_sent_by_the_server(dao)
    r = client.get("/api/jobs", headers=h(key))
    sent = _bytes_sent_by_the_server(dao) - before
    assert [j["id"] for j in r.json["jobs"]] == ids[::-1]
    assert r.json["jobs"][0]["sender_email"] == "ops@example.com"
    assert sent < 200_000, f"the database sent {sent} bytes to list 3 jobs"
