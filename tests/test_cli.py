"""The `mailjobs` command line against the test database."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import cli


@pytest.fixture()
def run(dao, database, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database.url)

    def invoke(*args: str):
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
        return result
    return invoke


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
