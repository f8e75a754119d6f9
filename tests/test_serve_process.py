"""`mailjobs serve` as a real process: it serves over HTTP with its embedded runner, sends a job
into the outbox, and stops cleanly on SIGTERM (runner row `stopped`, exit code 0)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from mailjobs.api_keys import create_key
from runner_helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(database, tmp_path, **env: str) -> tuple[subprocess.Popen, str]:
    """`python src/api_server.py` on a free port with the outbox transport, its output in
    tmp_path/serve.log; returns the process and its base URL."""
    port = free_port()
    full_env = {**os.environ, "DATABASE_URL": database.url, "PORT": str(port),
                "OUTBOX_DIR": str(tmp_path / "outbox"), "MAIL_TRANSPORT": "outbox", **env}
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([sys.executable, str(ROOT / "src" / "api_server.py")],
                                  env=full_env, stdout=log, stderr=subprocess.STDOUT)
    return server, f"http://127.0.0.1:{port}"


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_serve_sends_through_its_embedded_runner_and_stops_on_sigterm(dao, database, tmp_path):
    key = create_key(dao, "serve-test", ["*"]).key
    server, base = start_serve(database, tmp_path, POLL_INTERVAL="0.1", HEARTBEAT_INTERVAL="0.5",
                               SENDER_RATE_PER_MINUTE="0")
    try:
        wait_for(lambda: answers(f"{base}/healthz"), 30, every=0.2,
                 message="the server to be healthy")
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
    assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 2
    assert dao.runners()[0]["state"] == "stopped"
    output = (tmp_path / "serve.log").read_text()
    assert "NO MAIL IS SENT" in output
    assert "mailjobs is ready on" in output
    # DATABASE_URL is not the project-local database: no operator key was made or printed
    assert "no development key" in output and "API key (development)" not in output
    assert [k.name for k in dao.api_keys()] == ["serve-test"]


@pytest.mark.parametrize("command", [[sys.executable, str(ROOT / "src" / "api_server.py")],
                                     [str(Path(sys.executable).parent / "mailjobs"), "worker"]],
                         ids=["serve", "worker"])
@pytest.mark.parametrize("name, value", [
    ("SECRET_KEY", "CHANGE-ME"),                       # deploy/production.env.example's
    ("SECRET_KEY", "short-but-not-a-placeholder"),     # < 32 characters
    ("SECRET_KEY", "a" * 40),                          # long, but no one chose it at random
    ("TOKEN_ENCRYPTION_KEY", "CHANGE-ME"),             # not even a Fernet key
])
def test_serve_and_worker_refuse_a_placeholder_or_short_secret(database, tmp_path, command,
                                                               name, value):
    env = {**os.environ, "DATABASE_URL": database.url, "PORT": str(free_port()),
           "MAIL_TRANSPORT": "null", name: value}
    env.pop("DEVELOPMENT", None)
    try:
        done = subprocess.run(command, env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{command[-1]} started with {name}={value!r}") from None
    assert done.returncode != 0
    assert f"refusing to start: {name} is a placeholder" in done.stderr
    assert "mailjobs is ready" not in done.stderr


def test_development_mode_accepts_weak_secrets_and_production_accepts_real_ones(database):
    import secrets

    from cryptography.fernet import Fernet

    from mailjobs import bootstrap
    from mailjobs.settings import Settings

    weak = dict(secret_key="CHANGE-ME", token_encryption_key="CHANGE-ME")
    bootstrap.check_production_settings(Settings(**weak))                    # project-local
    bootstrap.check_production_settings(Settings(database_url=bootstrap.local_database_url(),
                                                 **weak))                    # its children
    bootstrap.check_production_settings(Settings(database_url=database.url, development=True,
                                                 **weak))
    with pytest.raises(ValueError, match="SECRET_KEY .* and TOKEN_ENCRYPTION_KEY"):
        bootstrap.check_production_settings(Settings(database_url=database.url, **weak))
    bootstrap.check_production_settings(Settings(
        database_url=database.url, secret_key=secrets.token_urlsafe(32),
        token_encryption_key=Fernet.generate_key().decode()))
    bootstrap.check_production_settings(Settings(database_url=database.url))   # unset: fine
    assert not bootstrap.development_mode(Settings(database_url=database.url))


def test_the_dev_api_key_file_is_created_0600_without_a_chmod_after(dao, tmp_path,
                                                                    monkeypatch):
    import stat

    from mailjobs import bootstrap

    chmods = []
    monkeypatch.setattr(os, "chmod", lambda *args, **kw: chmods.append(args))
    old_umask = os.umask(0o022)
    try:
        key = bootstrap.dev_api_key(dao, tmp_path / "dev_api_key")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "dev_api_key").stat().st_mode) == 0o600 and chmods == []
    assert bootstrap.dev_api_key(dao, tmp_path / "dev_api_key") == key


def test_a_body_over_the_limit_is_answered_in_json_however_large(dao, database, tmp_path):
    """Over MAX_REQUEST_BYTES by a little (Flask's check) or by a lot (waitress' own, before the
    app sees the request): both are the JSON 413, not waitress' text/plain."""
    key = create_key(dao, "limit-test", ["*"]).key
    server, base = start_serve(database, tmp_path, EMBEDDED_RUNNER="0", MAX_REQUEST_BYTES="2000")
    try:
        wait_for(lambda: answers(f"{base}/openapi.json"), 30, every=0.2,
                 message="the server to answer")
        for size in (2500, 100_000):
            r = requests.post(f"{base}/api/jobs/send_template_emails", data=b"x" * size,
                              headers={"Content-Type": "application/json",
                                       "X-API-Key": key}, timeout=10)
            assert r.status_code == 413, (size, r.text)
            assert r.headers["Content-Type"].startswith("application/json"), (size, r.text)
            assert r.json()["error"] == "payload_too_large", (size, r.json())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
