"""Helpers of the fault suite: scale, jobs, bounded waits and the exactly-once bookkeeping.

FAULTS_SCALE (float, default 1) multiplies sizes (recipients) linearly, and durations and kill
counts by its square root: the default run is 600 recipients, 5 kills, the database down 8 s, a
15 s failure storm; FAULTS_SCALE=16.6667 is 10,000 recipients, 20 kills, 33 s down, a 61 s storm.
FAULTS_REPORT=<file> appends each scenario's figures there as JSON lines.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet

import runner_helpers
from fake_gmail import FakeGmail
from mailjobs.transports.credentials import CredentialStore
from runner_helpers import wait_until_stoppable

SENDER = "ops@example.com"   # the root conftest's `fake` has this account

SCALE = float(os.environ.get("FAULTS_SCALE") or 1)
ROOT_SCALE = math.sqrt(SCALE)
FINAL = ("completed", "completed_with_errors", "failed", "cancelled")
MESSAGE_ID = re.compile(r"<mj\.(\d+)\.(\d+)\.")


def size(n: int) -> int:
    """A recipient count, scaled."""
    return max(1, round(n * SCALE))


def duration(seconds: float) -> float:
    """A duration (or a count of events), scaled by the square root of FAULTS_SCALE."""
    return seconds * ROOT_SCALE


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def job_body(n: int, prefix: str = "u", sender: str = "ops@example.com") -> dict:
    return {"sender_email": sender, "from_name": "Ops", "reply_to": "help@example.com",
            "template": {"subject": "Hi {{ name }}", "text": "Hello {{ name }} ({{ n }})",
                         "html": "<p>Hello {{ name }} from {{ company }}</p>"},
            "variables": {"company": "Acme"},
            "recipients": [{"email": f"{prefix}{i:05d}@example.com", "name": f"User {i}",
                            "variables": {"n": i}} for i in range(n)]}


def post_job(client, key: str, n: int, prefix: str = "u") -> int:
    r = client.post("/api/jobs/send_template_emails", json=job_body(n, prefix), headers=h(key))
    assert r.status_code == 202, r.json
    return r.json["job_id"]


def wait_for(condition: Callable[[], object], timeout: float, message: str,
             every: float = 0.1, on_timeout: Callable[[], str] | None = None) -> object:
    """runner_helpers.wait_for with the message as third argument, as the fault tests read."""
    return runner_helpers.wait_for(condition, timeout, every, message, on_timeout)


def wait_final(dao, job_id: int, timeout: float, fleet=None) -> str:
    def status():
        st = dao.job(job_id).status
        return st if st in FINAL else None

    def why() -> str:
        tail = ""
        if fleet is not None:
            tail = "\n" + "\n".join(fleet.output().splitlines()[-60:])
        return f"; counts {dao.recipient_counts(job_id)}, status {dao.job(job_id).status}{tail}"
    return wait_for(status, timeout, f"job {job_id} to finish", 0.2, why)


def sends_of_job(fake, job_id: int) -> Counter:
    """How many messages of this job the fake Gmail accepted, per To address.

    Indexed incrementally (fake.sent only grows), so polling it stays cheap at 10,000s of
    messages: the fake runs in this process and must not be starved."""
    done, index = getattr(fake, "_faults_index", (0, {}))
    sent = fake.sent[done:] if len(fake.sent) >= done else None
    if sent is None:                       # the fake was reset: start again
        done, index, sent = 0, {}, list(fake.sent)
    for s in sent:
        m = MESSAGE_ID.match(s.message["Message-ID"] or "")
        if m:
            to = s.message["To"].addresses[0].addr_spec.lower()
            index.setdefault(int(m.group(1)), Counter())[to] += 1
    fake._faults_index = (done + len(sent), index)
    return Counter(index.get(job_id, {}))


def all_recipients(dao, job_id: int):
    return dao.recipients_page(job_id, None, 0, 1_000_000)


def check_counts(client, key: str, dao, job_id: int) -> dict[str, int]:
    """The job's counts (API and DAO) match its rows and its total; returns them."""
    rows = all_recipients(dao, job_id)
    from_rows = dict(Counter(r.status for r in rows))
    job = client.get(f"/api/jobs/{job_id}", headers=h(key)).json
    assert job["counts"] == from_rows, (job["counts"], from_rows)
    assert dao.recipient_counts(job_id) == from_rows
    assert sum(from_rows.values()) == job["total"] == len(rows)
    return from_rows


def duplicates(sends: Counter) -> int:
    """Messages beyond the first per address."""
    return sum(n - 1 for n in sends.values() if n > 1)


def assert_exactly_once(fake, dao, job_id: int, n: int) -> Counter:
    """Every recipient is `sent` in the DB, and the fake Gmail holds exactly one message to it
    whose Gmail id the row recorded."""
    rows = all_recipients(dao, job_id)
    sends = sends_of_job(fake, job_id)
    assert len(rows) == n
    not_sent = [(r.to_email, r.status, r.error_code, r.error) for r in rows if r.status != "sent"]
    assert not not_sent, f"{len(not_sent)} not sent, e.g. {not_sent[:5]}"
    dup = {a: k for a, k in sends.items() if k > 1}
    assert not dup, f"{len(dup)} recipient(s) got more than one message: {list(dup.items())[:10]}"
    missing = {r.to_email for r in rows} - set(sends)
    assert not missing, f"{len(missing)} 'sent' but never reached Gmail: {sorted(missing)[:10]}"
    ids = {s.id for s in fake.sent if (m := MESSAGE_ID.match(s.message["Message-ID"] or ""))
           and int(m.group(1)) == job_id}
    assert {r.gmail_message_id for r in rows} == ids
    return sends


def report(name: str, **figures) -> None:
    """Print a scenario's figures (pytest -s shows them) and append them to FAULTS_REPORT."""
    line = {"scenario": name, "scale": SCALE, **figures}
    print(f"\nFAULTS {json.dumps(line)}")
    path = os.environ.get("FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


# Worker settings for the fault suite: quick polls, short leases so a killed worker's claims are
# taken over within seconds, quick DB backoff, no sender limits.
WORKER_ENV = {
    "MAIL_TRANSPORT": "gmail", "POLL_INTERVAL": "0.05", "RECORD_FLUSH_INTERVAL": "0.1",
    "SENDER_RATE_PER_MINUTE": "0", "SENDER_DAILY_CAP": "0", "RUNNER_CONCURRENCY": "4",
    "CLAIM_BATCH": "20", "LEASE_SECONDS": "3", "HEARTBEAT_INTERVAL": "0.5",
    "HEARTBEAT_LOG_INTERVAL": "5", "RETRY_BASE_DELAY": "0.2", "RETRY_MAX_DELAY": "1",
    "DB_BACKOFF_MAX": "1", "DB_CONNECT_TIMEOUT": "3", "DB_READ_TIMEOUT": "10",
    "DB_WRITE_TIMEOUT": "10", "DB_POOL_TIMEOUT": "3", "GMAIL_TIMEOUT": "5",
    "IN_DOUBT_POLICY": "check", "IN_DOUBT_CHECK_DELAY": "0", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
}


class Fleet:
    """Worker processes by slot: start, SIGKILL, restart; every one is killed at the end."""

    def __init__(self, database, dao, fake: FakeGmail, logdir: Path) -> None:
        self.database, self.dao, self.fake, self.logdir = database, dao, fake, logdir
        self.key = Fernet.generate_key().decode()
        settings = dao.settings.with_overrides(token_encryption_key=self.key)
        CredentialStore(settings, dao).store_info(SENDER, fake.authorized_user_info(SENDER),
                                                  resume=True)
        self.procs: dict[int, subprocess.Popen] = {}
        self.env: dict[int, dict[str, str]] = {}
        self.all: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.kills = 0

    def start(self, slot: int, **env: str) -> subprocess.Popen:
        self.env[slot] = {**self.env.get(slot, {}), **{k: str(v) for k, v in env.items()}}
        full_env = {**os.environ, **WORKER_ENV, "DATABASE_URL": self.database.url,
                    "GMAIL_API_ENDPOINT": self.fake.url, "GMAIL_TOKEN_URI": self.fake.token_uri,
                    "TOKEN_ENCRYPTION_KEY": self.key, **self.env[slot]}
        log = self.logdir / f"worker-{slot}-{len(self.all)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "mailjobs.job_runner"], env=full_env,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[slot] = proc
        self.all.append(proc)
        self.logs.append(log)
        return proc

    def start_many(self, n: int, **env: str) -> None:
        for slot in range(n):
            self.start(slot, **env)

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            self.kills += 1

    def restart(self, slot: int) -> subprocess.Popen:
        self.kill(slot)
        return self.start(slot)

    def alive(self) -> list[int]:
        return [slot for slot, p in self.procs.items() if p.poll() is None]

    def exited(self) -> list[tuple[int, int]]:
        """(pid, return code) of processes that ended without being killed by the test."""
        return [(p.pid, p.returncode) for p in self.all
                if p.poll() is not None and p.returncode != -signal.SIGKILL]

    def stop_all(self, timeout: float = 20.0) -> list[int]:
        """Warm stop (SIGTERM) of every live worker; returns their exit codes."""
        return [code for _, _, code in self._stop_live(timeout)]

    def stop_all_cleanly(self, timeout: float = 20.0) -> None:
        """stop_all, and every worker exited 0; if not, the failure names each worker that did
        not, with its exit code and the end of its own log (the fleet's joined output, cut at
        its end, hid the one that failed)."""
        bad = [(p, log, code) for p, log, code in self._stop_live(timeout) if code != 0]
        assert not bad, "\n".join(
            f"===== {log.name} (pid {p.pid}) exited {code}\n"
            f"{log.read_text(errors='replace')[-4000:]}" for p, log, code in bad)

    def _stop_live(self, timeout: float) -> list[tuple[subprocess.Popen, Path, int]]:
        """SIGTERM to every live worker, then (process, its log, exit code) of each. A worker
        started a moment ago may still be in the Python interpreter's own start, before
        mailjobs' first line installs its handlers: the signal is sent once it handles it."""
        live = [(p, log) for p, log in zip(self.all, self.logs, strict=True) if p.poll() is None]
        for p, _ in live:
            wait_until_stoppable(p)
            p.send_signal(signal.SIGTERM)
        stopped = []
        deadline = time.monotonic() + timeout
        for p, log in live:
            try:
                code = p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                code = p.wait(10)
            stopped.append((p, log, code))
        return stopped

    def output(self) -> str:
        return "\n".join(f"===== {log.name}\n{log.read_text(errors='replace')}"
                         for log in self.logs if log.exists())

    def grep(self, needle: str) -> list[str]:
        return [line for log in self.logs if log.exists()
                for line in log.read_text(errors="replace").splitlines() if needle in line]

    def close(self) -> None:
        for p in self.all:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        for p in self.all:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
