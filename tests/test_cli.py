"""The `mailjobs` command line against the test database."""
from __future__ import annotations

import json

import pytest


def test_api_key_create_prints_a_working_key_once_and_stores_only_its_hash(run, dao, client):
    result = run("api-key", "create", "--name", "newsletter", "--sender", "*@example.com")
    assert result.exit_code == 0
    key = result.stdout.strip()
    assert key.startswith("mj_")
    with dao.transaction() as cur:
        cur.execute("SELECT name, secret_hash, allowed_senders FROM api_keys")
        (name, secret_hash, senders), = cur.fetchall()
    assert name == "newsletter"
    assert key.split("_", 2)[2] not in secret_hash and len(secret_hash) == 64
    assert json.loads(senders) == ["*@example.com"]
    assert client.get("/api/jobs", headers={"X-API-Key": key}).status_code == 200


def test_api_key_list_and_revoke(run, client):
    key = run("api-key", "create", "--name", "a", "--sender", "*").stdout.strip()
    listed = json.loads(run("api-key", "list", "--json").stdout)
    assert [(k["name"], k["revoked"]) for k in listed] == [("a", False)]
    assert key not in run("api-key", "list").stdout
    assert run("api-key", "revoke", str(listed[0]["id"])).exit_code == 0
    assert client.get("/api/jobs", headers={"X-API-Key": key}).status_code == 401
    again = run("api-key", "revoke", str(listed[0]["id"]))
    assert again.exit_code != 0
    assert "no active key" in again.output


def test_migrate_twice_is_a_no_op(run):
    assert run("migrate").exit_code == 0
    assert run("migrate").exit_code == 0


def test_auth_imports_a_token_file_encrypted_and_resumes_paused_jobs(run, dao, client, key,
                                                                     tmp_path, monkeypatch):
    from cryptography.fernet import Fernet

    from mailjobs.transports.credentials import CredentialStore
    from test_api_enqueue import body, post

    secret = Fernet.generate_key().decode()
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEY", secret)
    job_id = post(client, key, body(1)).json["job_id"]
    dao.pause_sender("ops@example.com", "auth_revoked", "revoked", "sender_auth")
    assert dao.job(job_id).status == "paused"
    token = tmp_path / "token.json"
    token.write_text(json.dumps({"token": "at-1", "refresh_token": "rt-secret-1",
                                 "client_id": "c", "client_secret": "s",
                                 "token_uri": "https://oauth2.googleapis.com/token",
                                 "scopes": ["https://www.googleapis.com/auth/gmail.send"]}))
    result = run("auth", "ops@example.com", "--token-file", str(token))
    assert result.exit_code == 0, result.output
    assert "1 paused job(s) resumed" in result.output
    assert dao.job(job_id).status == "queued"
    assert b"rt-secret-1" not in dao.sender_credentials("ops@example.com")  # encrypted at rest
    settings = dao.settings.with_overrides(token_encryption_key=secret)
    assert CredentialStore(settings, dao).load_info("ops@example.com")["refresh_token"] == \
        "rt-secret-1"
    assert dao.senders()[0]["auth_state"] == "ok"


def test_a_bad_setting_is_refused_with_its_name(monkeypatch):
    from mailjobs.settings import load_settings

    monkeypatch.setenv("IN_DOUBT_POLICY", "sometimes")
    with pytest.raises(ValueError, match="IN_DOUBT_POLICY must be one of"):
        load_settings(dotenv=False)
    monkeypatch.setenv("IN_DOUBT_POLICY", "check")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="LOG_FORMAT must be one of text, json"):
        load_settings(dotenv=False)


def test_api_key_revoke_takes_the_prefix_as_list_prints_it(run, client):
    key = run("api-key", "create", "--name", "b", "--sender", "*").stdout.strip()
    table = run("api-key", "list").stdout
    printed = next(word for word in table.split() if word.startswith("mj_"))
    done = run("api-key", "revoke", printed)
    assert done.exit_code == 0, done.output
    assert client.get("/api/jobs", headers={"X-API-Key": key}).status_code == 401
