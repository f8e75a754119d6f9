"""The suppression list: the API (GET/POST /api/suppressions, DELETE /api/suppressions/{email}),
the CLI (`mailjobs suppressions`), enqueue skipping suppressed recipients (status `suppressed`,
counted in the 202), the runner skipping addresses suppressed after the job was stored, and
the dashboard showing them. Real MariaDB throughout."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mailjobs.cli.main import cli
from runner_helpers import count_rows, fast, recipients, running, wait_job_done
from test_api_enqueue import body, post

URL = "/api/suppressions"


def h(key):
    return {"X-API-Key": key}


def suppress(client, key, email, reason=None):
    return client.post(URL, json={"email": email, **({"reason": reason} if reason else {})},
                       headers=h(key))


# --- the API -------------------------------------------------------------------------------
def test_add_list_and_remove_an_address(client, key):
    r = suppress(client, key, "Ann@Example.com")
    assert r.status_code == 201
    assert r.json["email"] == "ann@example.com"             # stored lower-cased
    assert (r.json["reason"], r.json["job_id"], r.json["recipient_id"]) == ("manual", None, None)
    again = suppress(client, key, "ANN@example.COM", "complaint")
    assert again.status_code == 200                          # listed already: unchanged
    assert (again.json["id"], again.json["reason"]) == (r.json["id"], "manual")
    listed = client.get(URL, headers=h(key)).json
    assert [s["email"] for s in listed["suppressions"]] == ["ann@example.com"]
    assert listed["next_after"] is None
    assert client.delete(f"{URL}/aNN@example.com", headers=h(key)).status_code == 204
    gone = client.delete(f"{URL}/ann@example.com", headers=h(key))
    assert (gone.status_code, gone.json["error"]) == (404, "not_found")
    assert client.get(URL, headers=h(key)).json["suppressions"] == []


def test_an_address_with_a_slash_can_be_removed(client, key):
    assert suppress(client, key, "sales/eu@example.com").status_code == 201   # "/" is atext
    assert suppress(client, key, "a/b/c@example.com").status_code == 201
    assert client.delete(f"{URL}/sales%2Feu@example.com", headers=h(key)).status_code == 204
    assert client.delete(f"{URL}/a/b/c@example.com", headers=h(key)).status_code == 204
    assert client.get(URL, headers=h(key)).json["suppressions"] == []


def test_the_list_is_paged_by_id_and_filtered_by_reason(client, key):
    for i, reason in enumerate(["manual", "complaint", "manual", "unsubscribed", "hard_bounce"]):
        assert suppress(client, key, f"p{i}@example.com", reason).status_code == 201
    first = client.get(f"{URL}?limit=2", headers=h(key)).json
    assert [s["email"] for s in first["suppressions"]] == ["p0@example.com", "p1@example.com"]
    rest = client.get(f"{URL}?limit=2&after={first['next_after']}", headers=h(key)).json
    assert [s["email"] for s in rest["suppressions"]] == ["p2@example.com", "p3@example.com"]
    manual = client.get(f"{URL}?reason=manual", headers=h(key)).json["suppressions"]
    assert [s["email"] for s in manual] == ["p0@example.com", "p2@example.com"]


@pytest.mark.parametrize("payload, field", [
    ({"email": "not an address"}, "email"),
    ({"email": "a@example.com", "reason": "spite"}, "reason"),
    ({"email": "a@example.com", "extra": 1}, "extra"),
    ({}, "email"),
])
def test_bad_additions_are_400_with_the_field(client, key, dao, payload, field):
    r = client.post(URL, json=payload, headers=h(key))
    assert (r.status_code, r.json["error"], r.json["field"]) == (400, "validation_error", field)
    assert count_rows(dao, "suppressions") == 0
    bad = client.get(f"{URL}?reason=spite", headers=h(key))
    assert (bad.status_code, bad.json["field"]) == (400, "reason")


def test_each_key_has_its_own_list(client, key, make_key):
    other = make_key(senders=["*"], operator=True)          # operators too: their own list
    suppress(client, key, "ann@example.com")
    assert client.get(URL, headers=h(other)).json["suppressions"] == []
    assert client.delete(f"{URL}/ann@example.com", headers=h(other)).status_code == 404
    r = post(client, other, body(1, recipients=[{"email": "ann@example.com", "name": "Ann"}]))
    assert r.json["suppressed"] == 0
    assert client.get(URL).status_code == 401


def test_accents_are_not_folded_but_case_is(client, key):
    assert suppress(client, key, "muller@example.com").status_code == 201
    assert suppress(client, key, "müller@example.com").status_code == 201
    assert suppress(client, key, "MULLER@example.com").status_code == 200


# --- enqueue -------------------------------------------------------------------------------
def test_suppressed_recipients_are_stored_as_suppressed_and_counted(client, key, dao):
    suppress(client, key, "USER1@example.com", "unsubscribed")
    suppress(client, key, "user3@example.com")
    r = post(client, key, body(4))
    assert r.status_code == 202
    assert (r.json["status"], r.json["recipients"], r.json["suppressed"]) == ("queued", 4, 2)
    job_id = r.json["job_id"]
    rows = {x.to_email: x for x in recipients(dao, job_id)}
    assert (rows["user1@example.com"].status, rows["user1@example.com"].error_code) == \
        ("suppressed", "suppressed")
    assert "(unsubscribed)" in rows["user1@example.com"].error
    assert rows["user0@example.com"].status == "queued"
    job = client.get(f"/api/jobs/{job_id}", headers=h(key)).json
    assert job["counts"] == {"queued": 2, "suppressed": 2}
    page = client.get(f"/api/jobs/{job_id}/recipients?status=suppressed", headers=h(key)).json
    assert [x["to_email"] for x in page["recipients"]] == ["user1@example.com",
                                                          "user3@example.com"]


def test_a_job_whose_every_recipient_is_suppressed_is_completed_at_once(client, key, dao):
    for i in range(2):
        suppress(client, key, f"user{i}@example.com")
    r = post(client, key, body(2), **{"Idempotency-Key": "all-gone"})
    assert (r.status_code, r.json["status"], r.json["suppressed"]) == (202, "completed", 2)
    job = dao.job(r.json["job_id"], with_counts=True)
    assert (job.status, job.counts) == ("completed", {"suppressed": 2})
    assert "suppression list" in job.status_reason and job.finished_at is not None
    replay = post(client, key, body(2), **{"Idempotency-Key": "all-gone"})
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == r.json
    scheduled = post(client, key, body(2, send_at="2099-01-01T00:00:00+00:00"))
    assert scheduled.json["status"] == "completed"


def test_the_runner_sends_only_to_addresses_not_suppressed(client, key, dao, tmp_path):
    suppress(client, key, "user0@example.com")
    job_id = post(client, key, body(3)).json["job_id"]
    settings = fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "out"))
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert dao.job(job_id, with_counts=True).counts == {"sent": 2, "suppressed": 1}
    assert len(list((tmp_path / "out" / str(job_id)).glob("*.eml"))) == 2


def test_an_address_suppressed_after_the_job_was_stored_is_not_sent(client, key, dao, tmp_path):
    job_id = post(client, key, body(3)).json["job_id"]
    suppress(client, key, "user2@example.com", "unsubscribed")   # e.g. from another job's link
    settings = fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "out"),
                    sender_daily_cap=100)
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    rows = {x.to_email: x for x in recipients(dao, job_id)}
    assert (rows["user2@example.com"].status, rows["user2@example.com"].error_code) == \
        ("suppressed", "suppressed")
    # claimed, then skipped: no attempt counted, nothing charged to the sender's daily count
    assert rows["user2@example.com"].attempts == 0
    with dao.transaction() as cur:
        cur.execute("SELECT SUM(sends) FROM sender_hourly_sends")
        assert int(cur.fetchone()[0]) == 2
    assert {rows[f"user{i}@example.com"].status for i in (0, 1)} == {"sent"}
    assert len(list((tmp_path / "out" / str(job_id)).glob("*.eml"))) == 2


# --- the CLI -------------------------------------------------------------------------------
def test_the_cli_adds_lists_and_removes(run, client, key, dao):
    key_id = dao.api_keys()[0].id
    added = run("suppressions", "add", "Bob@Example.com", "--api-key", str(key_id))
    assert added.exit_code == 0 and "bob@example.com suppressed (manual)" in added.output
    prefix = key.split("_")[1]
    again = run("suppressions", "add", "bob@example.com", "--api-key", prefix,
                "--reason", "complaint")
    assert "was suppressed already (manual" in again.output
    run("suppressions", "add", "carol@example.com", "--api-key", key, "--reason", "complaint")
    table = run("suppressions", "list", "--api-key", str(key_id)).output
    assert "bob@example.com" in table and "carol@example.com" in table and "REASON" in table
    listed = json.loads(run("suppressions", "list", "--api-key", str(key_id), "--reason",
                            "complaint", "--json").output)
    assert [s["email"] for s in listed["suppressions"]] == ["carol@example.com"]
    assert post(client, key, body(1, recipients=[{"email": "bob@example.com",
                                                  "name": "Bob"}])).json["suppressed"] == 1
    assert run("suppressions", "remove", "BOB@example.com", "--api-key",
               str(key_id)).exit_code == 0
    missing = CliRunner().invoke(cli, ["suppressions", "remove", "bob@example.com",
                                       "--api-key", str(key_id)])
    assert missing.exit_code == 1 and "not on the suppression list" in missing.output
    bad = CliRunner().invoke(cli, ["suppressions", "add", "nope", "--api-key", str(key_id)])
    assert bad.exit_code == 1 and "not a valid address" in bad.output
    nokey = CliRunner().invoke(cli, ["suppressions", "list", "--api-key", "999"])
    assert nokey.exit_code == 1 and "no API key" in nokey.output


def test_show_and_the_dashboard_count_bounced_and_suppressed(run, client, key, dao, make_key):
    suppress(client, key, "user0@example.com")
    job_id = post(client, key, body(3)).json["job_id"]
    with dao.transaction() as cur:
        cur.execute("UPDATE job_recipients SET status='bounced', error_code='bounce_5xx', "
                    "error='hard bounce 5.1.1' WHERE job_id=%s AND to_email='user1@example.com'",
                    (job_id,))
    show = run("show", str(job_id)).output
    assert "bounced        1   suppressed 1" in show
    assert "bounce_5xx" in show
    op = make_key(senders=[], operator=True, name="ops")
    client.post("/dashboard/login", data={"api_key": op})
    page = client.get(f"/dashboard/jobs/{job_id}").text
    assert '<div class="n">1</div><div class="l">bounced</div>' in page
    assert '<div class="n">1</div><div class="l">suppressed</div>' in page
    jobs = client.get("/dashboard/").text
    assert "1 bounced" in jobs and "1 suppressed" in jobs
