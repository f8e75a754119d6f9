"""`mailjobs serve` as a real process: it serves over HTTP with its embedded runner, sends a job
into the outbox, and stops cleanly on SIGTERM (runner row `stopped`, exit code 0)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests

from api_keys import create_key
from runner_helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_sends_through_its_embedded_runner_and_stops_on_sigterm(dao, database, tmp_path):
    port = free_port()
    key = create_key(dao, "serve-test", ["*"]).key
    env = {**os.environ, "DATABASE_URL": database.url, "PORT": str(port),
           "OUTBOX_DIR": str(tmp_path / "outbox"), "MAIL_TRANSPORT": "outbox",
           "POLL_INTERVAL": "0.1", "HEARTBEAT_INTERVAL": "0.5", "SENDER_RATE_PER_MINUTE": "0"}
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, str(ROOT / "src" / "api_server.py")], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            try:
                return requests.get(f"{base}/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False
        wait_for(healthy, 30, every=0.2, message="the server to be healthy")
        r = requests.post(f"{base}/api/jobs/send_template_emails", headers={"X-API-Key": key},
                          json={"sender_email": "dev@example.com",
                                "template": {"subject": "Hi {{ name }}", "text": "Hello"},
                                "recipients": [{"email": "a@example.com", "name": "A"},
                                               {"email": "b@example.com", "name": "B"}]},
                          timeout=10)
        assert r.status_code == 202
        assert r.json()["warnings"] == [     # outbox mode is said to the API client too
            "MAIL_TRANSPORT is outbox: this server's runner sends no mail (messages are written "
            f"to {tmp_path / 'outbox'})"]
        job_id = r.json()["job_id"]
        wait_for(lambda: dao.job(job_id).status == "completed", 20, message="job completed")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 2
    assert dao.runners()[0]["state"] == "stopped"
    output = (tmp_path / "serve.log").read_text()
    assert "NO MAIL IS SENT" in output
    assert "mailjobs is ready on" in output
