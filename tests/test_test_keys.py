"""Test keys (issue 18): their jobs run the whole pipeline but never reach a real transport,
whatever MAIL_TRANSPORT is; every answer about them says "test": true; the dashboard marks them."""
from __future__ import annotations

import json

import pytest

from mailjobs import api_keys
from runner_helpers import SENDER, recipients, running, wait_job_done
from test_api_enqueue import body, post
from test_dashboard import login


def h(key):
    return {"X-API-Key": key}


@pytest.fixture()
def test_key(dao):
    def make(mode="outbox"):
        return api_keys.create_key(dao, "integration tests", [SENDER], test_mode=mode).key
    return make


def test_a_test_keys_job_completes_through_gmail_settings_and_gmail_receives_nothing(
        client, dao, fake, gmail_settings, test_key, tmp_path):
    # the sender's limits would let 1 message out: a test key's job is not held by them
    settings = gmail_settings.with_overrides(outbox_dir=str(tmp_path / "outbox"),
                                             sender_rate_per_minute=1, sender_daily_cap=1)
    job_id = post(client, test_key(), body(6)).json["job_id"]
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.requests == [] and fake.count() == 0    # no token refresh, no send, nothing
    rows = recipients(dao, job_id)
    assert {r.status for r in rows} == {"sent"}
    written = sorted(p.name for p in (tmp_path / "outbox" / str(job_id)).glob("*.eml"))
    assert written == sorted(f"{r.id}.eml" for r in rows)     # rendered, built, written
    assert b"Hello User 3 from Acme" in (tmp_path / "outbox" / str(job_id) /
                                         f"{rows[3].id}.eml").read_bytes()
    assert dao.sender_sends_24h(SENDER) == 0                  # nothing charged to the sender


def test_a_null_test_key_discards_its_messages(client, dao, fake, gmail_settings, test_key,
                                                 tmp_path):
    settings = gmail_settings.with_overrides(outbox_dir=str(tmp_path / "outbox"))
    job_id = post(client, test_key("null"), body(3)).json["job_id"]
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.requests == []
    assert not (tmp_path / "outbox").exists()


def test_a_real_keys_job_beside_it_still_goes_to_gmail(client, key, dao, fake, gmail_settings,
                                                        test_key, tmp_path):
    settings = gmail_settings.with_overrides(outbox_dir=str(tmp_path / "outbox"))
    test_job = post(client, test_key(), body(2)).json["job_id"]
    real_job = post(client, key, body(2)).json["job_id"]
    with running(settings, dao):
        assert wait_job_done(dao, test_job) == wait_job_done(dao, real_job) == "completed"
    assert fake.count() == 2
    assert {s.account for s in fake.sent} == {SENDER}
    assert len(list((tmp_path / "outbox" / str(test_job)).glob("*.eml"))) == 2
    assert not (tmp_path / "outbox" / str(real_job)).exists()


def test_every_answer_about_a_test_job_says_test(client, key, make_key, test_key):
    tk = test_key()
    r = post(client, tk, body(3))
    assert r.status_code == 202 and r.json["test"] is True
    assert any(w.startswith("test key:") for w in r.json["warnings"])
    assert r.json["estimate"]["limited_by"] == "none"      # no sender limits for it
    job_id = r.json["job_id"]
    assert client.get(f"/api/jobs/{job_id}", headers=h(tk)).json["test"] is True
    assert [j["test"] for j in client.get("/api/jobs", headers=h(tk)).json["jobs"]] == [True]
    assert client.get(f"/api/jobs/{job_id}/recipients", headers=h(tk)).json["test"] is True
    assert client.post(f"/api/jobs/{job_id}/pause", headers=h(tk)).json["test"] is True
    op = make_key(senders=[], operator=True)                # an operator sees it too
    assert client.get(f"/api/jobs/{job_id}", headers=h(op)).json["test"] is True
    real = post(client, key, body(1)).json
    assert real["test"] is False
    assert client.get(f"/api/jobs/{real['job_id']}", headers=h(op)).json["test"] is False
    listed = {j["id"]: j["test"] for j in client.get("/api/jobs", headers=h(op)).json["jobs"]}
    assert listed == {job_id: True, real["job_id"]: False}


def test_the_dashboard_marks_test_jobs(client, key, make_key, test_key):
    test_job = post(client, test_key(), body(1)).json["job_id"]
    real_job = post(client, key, body(1)).json["job_id"]
    login(client, make_key(senders=[], operator=True))
    page = client.get(f"/dashboard/jobs/{test_job}").get_data(as_text=True)
    assert 'class="badge st-test"' in page and "nothing reached a real transport" in page
    assert 'class="badge st-test"' not in client.get(f"/dashboard/jobs/{real_job}").get_data(
        as_text=True)
    listing = client.get("/dashboard/").get_data(as_text=True)
    assert listing.count('class="badge st-test"') == 1


def test_the_cli_creates_and_lists_test_keys(run, dao):
    out = run("api-key", "create", "--name", "ci", "--test", "--sender", SENDER, "--json")
    made = json.loads(out.output)
    assert made["test"] == "outbox"
    made_null = json.loads(run("api-key", "create", "--name", "ci-null", "--test=null",
                               "--json").output)
    assert made_null["test"] == "null"
    listed = {k["name"]: k["test"] for k in json.loads(run("api-key", "list", "--json").output)}
    assert listed == {"ci": "outbox", "ci-null": "null"}
    assert {k.name: k.test_mode for k in dao.api_keys()} == listed
    bad = run("api-key", "create", "--name", "x", "--test=gmail")
    assert bad.exit_code != 0 and "gmail" in bad.output
