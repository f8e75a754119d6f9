"""Fixtures of the fault suite: a fleet of real `python -m job_runner` worker processes
(output to files in tmp_path, all SIGKILLed at teardown, whatever happened) sending as SENDER
to the root conftest's `fake` Gmail.

Sizes and durations come from `faults_tools` (FAULTS_SCALE).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from fake_gmail import FakeGmail
from mailjobs.transports.credentials import CredentialStore
from runner_helpers import wait_until_stoppable

ROOT = Path(__file__).resolve().parents[2]
SENDER = "ops@example.com"   # the root conftest's `fake` has this account

# Worker settings for the fault suite: quick polls, short leases so a killed worker's claims are
# taken over within seconds, quick DB backoff, no sender limits.
WORKER_ENV = {
    "MAIL_TRANSPORT": "gmail", "POLL_INTERVAL": "0.05", "RECORD_FLUSH_INTERVAL": "0.1",
    "SENDER_RATE_PER_MINUTE": "0", "SENDER_DAILY_CAP": "0", "RUNNER_CONCURRENCY": "4",
    "CLAIM_BATCH": "20", "LEASE_SECONDS": "3", "HEARTBEAT_INTERVAL": "0.5",
    "HEARTBEAT_LOG_INTERVAL": "5", "RETRY_BASE_DELAY": "0.2", "RETRY_MAX_DELAY": "1",
    "DB_BACKOFF_MAX": "1", "DB_CONNECT_TIMEOUT": "3", "DB_READ_TIMEOUT": "10",
    "DB_WRITE_TIMEOUT": "10", "DB_POOL_TIMEOUT": "3", "GMAIL_TIMEOUT": "5",
    "IN_DOUBT_POLICY": "check", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
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
        """Warm stop (SIGTERM) of every live worker; returns their exit codes. A worker that
        was started a moment ago may still be in the Python interpreter's own start, before
        mailjobs' first line installs its handlers: the signal is sent once it handles it."""
        live = [p for p in self.all if p.poll() is None]
        for p in live:
            wait_until_stoppable(p)
            p.send_signal(signal.SIGTERM)
        codes = []
        deadline = time.monotonic() + timeout
        for p in live:
            try:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait(10))
        return codes

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


@pytest.fixture()
def fleet(database, dao, fake, tmp_path):
    fleet = Fleet(database, dao, fake, tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()
