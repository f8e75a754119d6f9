"""The operators' command line: jobs, show, errors, recipients, retry, cancel/pause/resume,
watch, runners, senders — against the database, against a remote API (--url), and as a real
subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from runner_helpers import fast, running, wait_job_done
from test_api_enqueue import body, post

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def failed_job(client, key, dao, tmp_path):
    """A finished job: 3 sent, 2 failed with template_error."""
    b = body(5)
    b["template"]["text"] = "{{ n + 1 }}"
    for i, r in enumerate(b["recipients"]):
        r["variables"] = {"n": "x" if i < 2 else i}
    job_id = post(client, key, b).json["job_id"]
    with running(fast(dao.settings, mail_transport="outbox",
                      outbox_dir=str(tmp_path / "out")), dao):
        wait_job_done(dao, job_id)
    return job_id


def test_jobs_show_and_errors(run, failed_job):
    out = run("jobs").output
    assert "completed_with_errors" in out and str(failed_job) in out
    listed = json.loads(run("jobs", "--json").output)
    assert [j["id"] for j in listed] == [failed_job]
    show = run("show", str(failed_job)).output
    assert "counts         failed=2, sent=3" in show
    assert "template_error" in show
    errors = json.loads(run("errors", str(failed_job), "--json").output)
    assert [(e["error_code"], e["count"]) for e in errors] == [("template_error", 2)]


def test_recipients_filtered_by_status(run, failed_job):
    page = json.loads(run("recipients", str(failed_job), "--status", "failed", "--json").output)
    assert [r["error_code"] for r in page["recipients"]] == ["template_error"] * 2
    human = run("recipients", str(failed_job), "--status", "failed").output
    assert "user0@example.com" in human and "user4@example.com" not in human


def test_retry_cancel_pause_resume_and_clear_errors(run, failed_job, client, key):
    assert "2 recipient(s) queued" in run("retry", str(failed_job), "--error-code",
                                          "template_error").output
    assert "is paused" in run("pause", str(failed_job)).output
    again = run("pause", str(failed_job))
    assert again.exit_code == 1
    assert "paused already" in again.output
    assert "is running" in run("resume", str(failed_job)).output
    assert "is cancelled" in run("cancel", str(failed_job)).output
    missing = run("show", "999999")
    assert (missing.exit_code, "no job 999999" in missing.output) == (1, True)


def test_watch_ends_with_the_job(run, client, key, dao, tmp_path):
    job_id = post(client, key, body(30)).json["job_id"]
    s = fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "out"),
             sender_rate_per_minute=600, sender_burst_seconds=0.5)
    with running(s, dao):
        result = run("watch", str(job_id), "--interval", "0.2")
    assert result.exit_code == 0
    assert "30/30 sent=30 failed=0 completed" in result.output
    assert "rate=" in result.output and "eta=" in result.output


def test_runners_and_senders(run, client, key, dao, tmp_path):
    job_id = post(client, key, body(2)).json["job_id"]
    with running(fast(dao.settings, mail_transport="outbox",
                      outbox_dir=str(tmp_path / "out")), dao) as (runner,):
        wait_job_done(dao, job_id)
        rows = json.loads(run("runners", "--json").output)
        assert [(r["id"], r["alive"]) for r in rows] == [(runner.id, True)]
    human = run("runners").output
    assert runner.id in human and "stopped" in human
    senders = json.loads(run("senders", "--json").output)
    assert senders[0]["email"] == "ops@example.com" and senders[0]["sent_24h"] == 0


def test_the_same_commands_work_against_a_remote_api(run, app, failed_job, make_key):
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        op = make_key(senders=[], operator=True)
        show = json.loads(run("--url", url, "--key", op, "show", str(failed_job), "--json").output)
        assert show["counts"] == {"sent": 3, "failed": 2}
        refused = run("--url", url, "--key", op, "pause", str(failed_job))
        assert refused.exit_code == 1 and "can be paused (HTTP 409)" in refused.output
        assert "2 recipient(s) queued" in run("--url", url, "--key", op, "retry",
                                              str(failed_job)).output
        remote = json.loads(run("--url", url, "--key", op, "runners", "--json").output)
        assert [(r["state"], r["alive"]) for r in remote] == [("stopped", False)]
        plain = make_key(senders=["*"])
        denied = run("--url", url, "--key", plain, "show", str(failed_job))
        assert denied.exit_code == 1 and "HTTP 404" in denied.output
        nokey = run("--url", url, "show", "1")
        assert nokey.exit_code == 1 and "needs an API key" in nokey.output
    finally:
        server.shutdown()


def test_the_cli_runs_as_a_subprocess(failed_job, database):
    env = {**os.environ, "DATABASE_URL": database.url}
    done = subprocess.run([str(Path(sys.executable).parent / "mailjobs"), "show",
                           str(failed_job), "--json"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "completed_with_errors"
    bad = subprocess.run([str(Path(sys.executable).parent / "mailjobs"), "show", "424242"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "Error: no job 424242" in bad.stderr
