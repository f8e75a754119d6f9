"""Looking one address up across jobs: GET /api/recipients?email= and `mailjobs trace`, the
answer to "did ann@example.com get our mail, and if not, why?". Real MariaDB, a real runner
(outbox transport), the API through Flask's test client and over HTTP for the remote CLI."""
from __future__ import annotations

import json
import threading

import pytest

from runner_helpers import fast, running, wait_job_done
from test_api_enqueue import body, post

URL = "/api/recipients"
ANN = "ann@example.com"


def h(key):
    return {"X-API-Key": key}


def job_with(client, key, *addresses: str) -> int:
    b = body(0)
    b["recipients"] = [{"email": a, "name": a.split("@")[0], "variables": {}} for a in addresses]
    return accepted(post(client, key, b))


def accepted(response) -> int:
    assert response.status_code == 202, response.json
    return response.json["job_id"]


@pytest.fixture()
def history(client, key, make_key, dao, tmp_path):
    """Three jobs of `key` that mailed Ann, one of another key, then Ann unsubscribed."""
    other = make_key(senders=["ops@example.com"], name="other")
    sent = job_with(client, key, ANN, "bob@example.com")
    b = body(0)
    b["template"]["text"] = "{{ n + 1 }}"
    b["recipients"] = [{"email": "Ann@Example.com", "name": "Ann",
                        "variables": {"n": "not a number"}}]
    broken = accepted(post(client, key, b))               # any case; fails at render time
    b = body(0)
    # a header injection the template makes at render time (a variable with a line break
    # would be refused at POST)
    b["template"]["subject"] = "Hi {{ topic|replace('+', '\\r\\nBcc: evil@example.net') }}"
    b["recipients"] = [{"email": ANN, "name": "Ann", "variables": {"topic": "x+"}}]
    injected = accepted(post(client, key, b))
    theirs = job_with(client, other, ANN)
    with running(fast(dao.settings, mail_transport="outbox",
                      outbox_dir=str(tmp_path / "out")), dao):
        for job_id in (sent, broken, injected, theirs):
            wait_job_done(dao, job_id)
    assert client.post("/api/suppressions", json={"email": ANN, "reason": "unsubscribed"},
                       headers=h(key)).status_code == 201
    return {"sent": sent, "broken": broken, "injected": injected, "theirs": theirs,
            "other": other}


def test_an_address_is_traced_across_this_keys_jobs_newest_first(client, key, history):
    r = client.get(URL, query_string={"email": "ANN@example.com"}, headers=h(key))
    assert r.status_code == 200
    t = r.json
    assert t["email"] == "ANN@example.com"
    rows = t["recipients"]
    assert [x["job_id"] for x in rows] == [history["injected"], history["broken"],
                                          history["sent"]]             # not the other key's
    injected, broken, sent = rows
    assert (sent["status"], sent["error_code"], sent["job_status"]) == ("sent", None, "completed")
    assert sent["sent_at"] and sent["gmail_message_id"] and sent["message_id"]
    assert (broken["status"], broken["error_code"]) == ("failed", "template_error")
    assert "TypeError" in broken["error"]
    assert (injected["status"], injected["error_code"]) == ("failed", "header_injection")
    assert all(x["sender_email"] == "ops@example.com" and x["created_at"] for x in rows)
    assert [(s["reason"], s["job_id"]) for s in t["suppressions"]] == [("unsubscribed", None)]
    assert t["next_before"] is None


def test_an_operator_key_sees_every_keys_rows_and_pages_by_id(client, key, make_key, history):
    op = make_key(senders=[], operator=True)
    first = client.get(URL, query_string={"email": ANN, "limit": 2}, headers=h(op)).json
    assert [x["job_id"] for x in first["recipients"]] == [history["theirs"], history["injected"]]
    assert first["next_before"] == first["recipients"][-1]["id"]
    rest = client.get(URL, query_string={"email": ANN, "limit": 2,
                                         "before": first["next_before"]}, headers=h(op)).json
    assert [x["job_id"] for x in rest["recipients"]] == [history["broken"], history["sent"]]
    assert rest["next_before"] is None          # a full page, but the last one: no cursor
    last = client.get(URL, query_string={"email": ANN, "before": rest["recipients"][-1]["id"]},
                      headers=h(op)).json
    assert last == {**last, "recipients": [], "next_before": None}
    # the other key sees only its own job and no suppression of Ann
    theirs = client.get(URL, query_string={"email": ANN}, headers=h(history["other"])).json
    assert [x["job_id"] for x in theirs["recipients"]] == [history["theirs"]]
    assert theirs["suppressions"] == []


@pytest.mark.parametrize("query, field", [
    ({}, "email"),
    ({"email": "  "}, "email"),
    ({"email": "not-an-address"}, "email"),
    ({"email": ANN, "limit": "0"}, "limit"),
    ({"email": ANN, "before": "x"}, "before"),
])
def test_bad_lookups_are_400_naming_the_field(client, key, query, field):
    r = client.get(URL, query_string=query, headers=h(key))
    assert r.status_code == 400
    assert r.json["field"] == field


def test_an_address_in_no_job_is_an_empty_answer(client, key):
    r = client.get(URL, query_string={"email": "nobody@example.com"}, headers=h(key))
    assert r.status_code == 200
    assert r.json == {"email": "nobody@example.com", "recipients": [], "next_before": None,
                      "suppressions": []}


def test_the_cli_traces_from_the_database_and_through_the_api(run, app, history, make_key):
    human = run("trace", ANN).output
    lines = human.splitlines()
    assert lines[0].split()[:4] == ["JOB", "JOB_STATUS", "RECIPIENT", "STATUS"]
    assert str(history["theirs"]) == lines[1].split()[0]        # the database: every key's
    assert "header_injection" in human and "template_error" in human
    assert "suppressed for API key" in human and "unsubscribed" in human
    as_json = json.loads(run("trace", ANN, "--json").output)
    assert len(as_json["recipients"]) == 4
    refused = run("trace", "not-an-address")
    assert refused.exit_code == 1 and "is not an address" in refused.output

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        remote = json.loads(run("--url", url, "--key", history["other"], "trace", ANN,
                                "--json").output)
        assert [x["job_id"] for x in remote["recipients"]] == [history["theirs"]]
        bad = run("--url", url, "--key", history["other"], "trace", "x")
        assert bad.exit_code == 1 and "HTTP 400" in bad.output
    finally:
        server.shutdown()
