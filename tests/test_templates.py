"""Stored templates with versions: a job names one, records the exact version, and later edits
never change what it sends."""
from __future__ import annotations

from runner_helpers import fast, running, wait_job_done
from test_api_enqueue import body, post


def h(key):
    return {"X-API-Key": key}


WELCOME = {"name": "welcome", "subject": "Welcome {{ name }}", "text": "v1 for {{ name }}",
           "html": "<p>v1 {{ name }}</p>"}


def test_create_update_and_list_versions(client, key):
    r = client.post("/api/templates", json=WELCOME, headers=h(key))
    assert (r.status_code, r.json["version"], r.json["name"]) == (201, 1, "welcome")
    assert r.headers["Location"] == "/api/templates/welcome"
    dup = client.post("/api/templates", json=WELCOME, headers=h(key))
    assert (dup.status_code, dup.json["field"]) == (409, "name")
    r = client.put("/api/templates/welcome", json={"subject": "Hi {{ name }}", "text": "v2"},
                   headers=h(key))
    assert (r.status_code, r.json["version"]) == (200, 2)
    versions = client.get("/api/templates/welcome", headers=h(key)).json["versions"]
    assert [(v["version"], v["text"]) for v in versions] == [(2, "v2"), (1, "v1 for {{ name }}")]
    listed = client.get("/api/templates", headers=h(key)).json["templates"]
    assert [(t["name"], t["version"]) for t in listed] == [("welcome", 2)]


def test_templates_are_private_to_their_key(client, key, make_key):
    client.post("/api/templates", json=WELCOME, headers=h(key))
    other = make_key(senders=["*"])
    assert client.get("/api/templates/welcome", headers=h(other)).status_code == 404
    assert client.get("/api/templates", headers=h(other)).json["templates"] == []
    b = body(1, template_name="welcome")
    del b["template"]
    r = post(client, other, b)
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (400, "unknown_template", "template_name")


def test_bad_templates_are_refused(client, key):
    r = client.post("/api/templates", json={**WELCOME, "html": "{% if %}"}, headers=h(key))
    assert (r.status_code, r.json["error"], r.json["field"]) == (400, "template_error", "html")
    r = client.post("/api/templates", json={**WELCOME, "name": "bad name!"}, headers=h(key))
    assert (r.status_code, r.json["field"]) == (400, "name")
    r = client.put("/api/templates/nothing", json={"subject": "s", "text": "t"}, headers=h(key))
    assert r.status_code == 404


def test_a_job_keeps_the_version_it_was_created_with(client, key, dao, tmp_path):
    import email
    import email.policy

    client.post("/api/templates", json=WELCOME, headers=h(key))
    b = body(2, template_name="welcome")
    del b["template"]
    first = post(client, key, b).json["job_id"]
    client.put("/api/templates/welcome", json={"subject": "Changed {{ name }}", "text": "v2"},
               headers=h(key))
    pinned = dict(b, template_version=1)
    second = post(client, key, pinned).json["job_id"]
    newest = post(client, key, b).json["job_id"]
    assert client.get(f"/api/jobs/{first}", headers=h(key)).json["template_version"] == 1
    assert client.get(f"/api/jobs/{second}", headers=h(key)).json["template_version"] == 1
    assert client.get(f"/api/jobs/{newest}", headers=h(key)).json["template_version"] == 2
    with running(fast(dao.settings, mail_transport="outbox",
                      outbox_dir=str(tmp_path / "out")), dao):
        for job_id in (first, second, newest):
            assert wait_job_done(dao, job_id) == "completed"

    def subject(job_id):
        path = next((tmp_path / "out" / str(job_id)).glob("*.eml"))
        return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["Subject"]
    assert subject(first).startswith("Welcome ")   # edited after it was queued: unchanged
    assert subject(second).startswith("Welcome ")
    assert subject(newest).startswith("Changed ")


def test_a_job_gives_exactly_one_of_template_and_template_name(client, key):
    r = post(client, key, body(1, template_name="welcome"))
    assert (r.status_code, r.json["error"]) == (400, "validation_error")
    assert "either template or template_name" in r.json["message"]
    b = body(1, template_version=2)
    r = post(client, key, b)
    assert "template_version goes with template_name" in r.json["message"]
