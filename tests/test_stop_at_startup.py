"""A stop signal at any moment of a `mailjobs worker` or `mailjobs serve` start-up ends the
process cleanly: exit code 0, one log line, and no claim left behind (issue: the fault suite's
last worker got SIGTERM while importing and died of it, exit -15).

Each case waits until the process catches SIGTERM (the first line of entry.py has run; before
that only the Python interpreter is starting), then waits the given delay, which lands the signal
in a different phase: importing, reading settings, migrating, starting the runner, running.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner_helpers import recipients, wait_until_stoppable
from test_api_enqueue import body, post

ROOT = Path(__file__).resolve().parents[1]
MAILJOBS = ROOT / ".venv" / "bin" / "mailjobs"
DELAYS = [0.0, 0.05, 0.2, 0.5, 1.0, 2.0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: str, database, tmp_path: Path, **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "DATABASE_URL": database.url, "MAIL_TRANSPORT": "outbox",
                "OUTBOX_DIR": str(tmp_path / "outbox"), "POLL_INTERVAL": "0.05",
                "RECORD_FLUSH_INTERVAL": "0.05", "SENDER_RATE_PER_MINUTE": "0",
                "SENDER_DAILY_CAP": "0", "PORT": str(free_port()), "PYTHONUNBUFFERED": "1",
                **env}
    return subprocess.Popen([str(MAILJOBS), command], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.parametrize("delay", DELAYS)
@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_stop_signal_at_any_moment_of_start_up_exits_0(command, delay, client, key, dao,
                                                          database, tmp_path):
    job_id = post(client, key, body(50)).json["job_id"]
    proc = start(command, database, tmp_path)
    try:
        wait_until_stoppable(proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "SIGTERM during start-up" in out or "SIGTERM: stopping after the messages" in out, out
    assert "Traceback" not in out, out
    statuses = {r.status for r in recipients(dao, job_id)}
    assert statuses <= {"queued", "sent"}, (statuses, out)   # nothing left claimed
    assert all(r.claimed_by is None for r in recipients(dao, job_id) if r.status == "queued")


def test_sigint_during_start_up_exits_0_too(database, tmp_path):
    proc = start("worker", database, tmp_path)
    wait_until_stoppable(proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "SIGINT" in out and "Aborted" not in out, out



def test_a_stop_signal_landing_in_a_finalizer_is_not_printed_and_still_stops(tmp_path):
    """The signal handler's StartupInterrupted raised inside a __del__ (pymysql's MySQLResult
    under the garbage collector, in the field) is dropped by Python; it must not print a
    traceback, and the next checkpoint still stops the process with exit 0."""
    script = tmp_path / "finalizer.py"
    script.write_text(
        "import os, signal, time\n"
        "from mailjobs import entry\n"
        "entry.install()\n"
        "class Result:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        deadline = time.monotonic() + 5\n"
        "        while entry._requested is None and time.monotonic() < deadline:\n"
        "            pass   # the handler runs here, inside the finalizer\n"
        "Result()\n"
        "entry.check()\n"
        "print('not stopped')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert "not stopped" not in done.stdout
    assert "SIGTERM during start-up" in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
