"""Scenario: MariaDB frozen with SIGSTOP mid-job (nothing answers at all: what a hung host or a
dead link looks like from the client: connections are accepted, packets vanish), for longer
than every timeout, then SIGCONT. Expectations: tests/faults/outage.py.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults_tools import duration
from outage import outage_mid_job

from mailjobs.api_keys import create_key
from runner_helpers import wait_for
from test_serve_process import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture()
def freezer(database):
    """freeze() / thaw() the session's MariaDB; always thawed at the end."""
    if database.server is None:
        pytest.skip("needs the private test server (TEST_DATABASE_URL is set)")
    pid = database.server.pid()

    class Freezer:
        def freeze(self) -> None:
            os.kill(pid, signal.SIGSTOP)

        def thaw(self) -> None:
            os.kill(pid, signal.SIGCONT)

    yield Freezer()
    os.kill(pid, signal.SIGCONT)


def test_frozen_database_mid_job(dao, fake, gmail_settings, make_key, freezer, caplog):
    outage_mid_job("frozen_database", gmail_settings, dao, make_key(senders=["*"], operator=True),
                   fake, freezer, caplog, duration(12))


def _send(port: int, path: str, key: str | None = None) -> socket.socket:
    """An HTTP/1.1 GET written whole to a socket of its own; read its answer with _answer."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    auth = f"X-API-Key: {key}\r\n" if key else ""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n".encode())
    return conn


def _answer(conn: socket.socket) -> tuple[int, dict]:
    data = b""
    with conn:
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_gunicorn_answers_healthz_while_every_thread_waits_on_a_frozen_database(
        database, dao, freezer, tmp_path):
    """The deployment's gunicorn (deploy/gunicorn.conf.py) with one process of 2 HTTP threads:
    4 requests that need the database are sent first (2 wait on it, 2 queue behind them), then
    /healthz and /openapi.json: they are answered at once by the fast lane, not after the
    stuck ones' DB_REQUEST_DEADLINE. Afterwards the stuck requests get their 503s."""
    deadline = 6
    port = free_port()
    key = create_key(dao, "lanes", ["*"]).key
    env = {**os.environ, "DATABASE_URL": database.url, "MAIL_TRANSPORT": "outbox",
           "OUTBOX_DIR": str(tmp_path / "outbox"), "EMBEDDED_RUNNER": "0", "PORT": str(port),
           "WEB_CONCURRENCY": "1", "HTTP_THREADS": "2", "DB_REQUEST_DEADLINE": str(deadline)}
    with open(tmp_path / "gunicorn.log", "w") as log:
        api = subprocess.Popen([str(BIN / "gunicorn"), "-c", str(ROOT / "deploy/gunicorn.conf.py"),
                                "mailjobs.web.wsgi:app"], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            try:
                return _answer(_send(port, "/api/jobs", key))[0] == 200
            except OSError:
                return False
        wait_for(listening, 40, every=0.2, message="gunicorn answering with the database up")
        freezer.freeze()
        try:
            # the kernel hands connections over in the order they were made: these four are
            # accepted before the /healthz below, and fill the main lane
            stuck = [_send(port, "/api/jobs", key) for _ in range(4)]
            started = time.monotonic()
            health = _answer(_send(port, "/healthz"))
            health_seconds = time.monotonic() - started
            started = time.monotonic()
            doc = _answer(_send(port, "/openapi.json"))
            doc_seconds = time.monotonic() - started
            answers = [_answer(conn) for conn in stuck]
        finally:
            freezer.thaw()
        wait_for(lambda: _answer(_send(port, "/api/jobs", key))[0] == 200, 10, every=0.1,
                 message="normal service after the thaw")
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=30)
        except subprocess.TimeoutExpired:
            api.kill()
    assert health[0] == 503 and health[1]["database"] == "timeout", health
    assert health_seconds < 2, health_seconds
    assert doc[0] == 200 and doc[1]["openapi"].startswith("3.1") and doc_seconds < 2, doc_seconds
    assert [code for code, _ in answers] == [503] * 4, answers
    assert {body["error"] for _, body in answers} == {"database_unavailable"}
    assert api.returncode == 0, (tmp_path / "gunicorn.log").read_text()[-2000:]
