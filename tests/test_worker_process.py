"""`mailjobs worker` as a real process: it sends, and SIGTERM stops it warmly (the message in
hand finishes, unsent claims are released, the runner row says stopped); a second signal exits
at once."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography.fernet import Fernet

from mailjobs.transports.credentials import CredentialStore
from runner_helpers import recipients, wait_for
from test_api_enqueue import body, post

ROOT = Path(__file__).resolve().parents[1]
SENDER = "ops@example.com"


def start_worker(database, fake, dao, stdout: Path | None = None, **env) -> subprocess.Popen:
    key = Fernet.generate_key().decode()
    settings = dao.settings.with_overrides(token_encryption_key=key)
    CredentialStore(settings, dao).store_info(SENDER, fake.authorized_user_info(SENDER),
                                              resume=True)
    full_env = {**os.environ, "DATABASE_URL": database.url, "MAIL_TRANSPORT": "gmail",
                "GMAIL_API_ENDPOINT": fake.url, "GMAIL_TOKEN_URI": fake.token_uri,
                "TOKEN_ENCRYPTION_KEY": key, "POLL_INTERVAL": "0.05",
                "RECORD_FLUSH_INTERVAL": "0.05", "SENDER_RATE_PER_MINUTE": "0",
                "SENDER_DAILY_CAP": "0", "RUNNER_CONCURRENCY": "1", "LOG_LEVEL": "INFO", **env}
    out = open(stdout, "w") if stdout else subprocess.PIPE
    try:
        return subprocess.Popen([sys.executable, "-m", "mailjobs.job_runner"], env=full_env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    finally:
        if stdout:
            out.close()


def test_a_worker_process_sends_a_job(client, key, dao, database, fake):
    job_id = post(client, key, body(5)).json["job_id"]
    worker = start_worker(database, fake, dao)
    try:
        wait_for(lambda: dao.job(job_id).status == "completed", 30, message="job completed")
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out
    assert fake.count() == 5
    assert "started (worker" in out and f"job={job_id} completed" in out


def test_sigterm_finishes_the_message_in_hand_and_releases_the_rest(client, key, dao, database,
                                                                   fake):
    fake.hang_next(2.0, count=1)  # the first send takes 2 s
    job_id = post(client, key, body(10)).json["job_id"]
    worker = start_worker(database, fake, dao)
    try:
        wait_for(lambda: fake.in_flight(SENDER), 20, message="the first send at the fake")
        worker.send_signal(signal.SIGTERM)   # while that send takes its 2 s
        out, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, out
    counts = dao.recipient_counts(job_id)
    assert counts == {"sent": 1, "queued": 9}, (counts, out)
    assert fake.count() == 1
    assert all(r.claimed_by is None and r.attempts == 0 for r in recipients(dao, job_id)
               if r.status == "queued")
    assert dao.runners()[0]["state"] == "stopped"
    assert re.search(r"released [1-9] unsent claim\(s\)", out)  # what it held beyond the one


def test_a_second_signal_exits_at_once(client, key, dao, database, fake, tmp_path):
    fake.hang_next(20.0, count=1)
    post(client, key, body(3))
    log = tmp_path / "worker.log"
    worker = start_worker(database, fake, dao, stdout=log)
    try:
        wait_for(lambda: fake.in_flight(SENDER), 20, message="a send in progress")
        worker.send_signal(signal.SIGTERM)
        # the second signal only once the first was handled (two pending ones would be one)
        wait_for(lambda: "stopping after the messages in hand" in log.read_text(), 20,
                 message="the first signal handled")
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
        assert time.monotonic() - started < 5
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 130


def test_with_log_format_json_every_line_is_an_object_with_the_recipients_fields(
        client, key, dao, database, fake):
    fake.fail_next(400, "invalidArgument", "Invalid To header", count=1)
    job_id = post(client, key, body(3)).json["job_id"]
    worker = start_worker(database, fake, dao, LOG_FORMAT="json")
    try:
        wait_for(lambda: dao.job(job_id).status == "completed_with_errors", 30,
                 message="job done")
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]   # all JSON
    assert all({"ts", "level", "logger", "message"} <= set(x) for x in lines)
    outcomes = {x["recipient_id"]: x for x in lines if "outcome" in x}
    rows = {r.id: r for r in recipients(dao, job_id)}
    assert set(outcomes) == set(rows)                   # one outcome line per recipient
    for rid, x in outcomes.items():
        assert (x["job_id"], x["to_email"], x["outcome"], x["attempt"]) == \
            (job_id, rows[rid].to_email, rows[rid].status, rows[rid].attempts)
        assert x["runner"].startswith("r-") and f"recipient={rid}" in x["message"]
    failed = [x for x in outcomes.values() if x["outcome"] == "failed"]
    assert [(x["level"], x["error_code"]) for x in failed] == [("WARNING", "gmail_400")]
    assert any(x["message"].startswith("runner ") and "started (worker" in x["message"]
               for x in lines)
