"""Fixtures that build real resources: a private MariaDB server started for the test session
(never a mock), its schema migrated, the Flask app over it, and API keys.

Set TEST_DATABASE_URL to run against an existing server instead (tests that stop and start the
server are then skipped).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailjobs import api_keys
from mailjobs.api_server import create_app
from mailjobs.dao_mysql import Dao
from mailjobs.db.local_mariadb import LocalMariaDB
from mailjobs.db.migrations import apply_migrations
from mailjobs.settings import Settings
from runner_helpers import SENDER, count_rows  # noqa: F401  (tests import them from there)

ROOT = Path(__file__).resolve().parents[1]

TEST_DB = "mailjobs_test"
TABLES = ["job_recipients", "jobs", "api_keys", "runners", "senders", "sender_hourly_sends", "templates",
          "smtp_slots", "suppressions", "bounce_messages", "dashboard_sessions", "learned_limits",
          "webhook_endpoints", "webhook_deliveries", "webhook_events",
          "delegated_keys", "send_as_addresses"]


@dataclass
class TestDatabase:
    url: str
    server: LocalMariaDB | None  # None when an external server is used

    def settings(self, **overrides) -> Settings:
        return Settings(database_url=self.url, db_connect_timeout=3, db_read_timeout=10,
                        db_write_timeout=10, db_pool_timeout=3).with_overrides(**overrides)


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> TestDatabase:
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        db = TestDatabase(external, None)
    else:
        server = LocalMariaDB(tmp_path_factory.mktemp("mariadb"))
        server.start()
        db = TestDatabase(server.url(TEST_DB), server)
    apply_migrations(db.settings().db)
    yield db
    if db.server is not None:
        db.server.stop()


@pytest.fixture()
def dao(database: TestDatabase) -> Dao:
    dao = Dao(database.settings())
    with dao.transaction() as cur:
        cur.execute("SET FOREIGN_KEY_CHECKS = 0")
        for table in TABLES:
            cur.execute(f"TRUNCATE TABLE {table}")
        cur.execute("SET FOREIGN_KEY_CHECKS = 1")
    yield dao
    dao.close()


@pytest.fixture()
def app(dao: Dao, database: TestDatabase):
    return create_app(dao.settings, dao)


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def make_key(dao: Dao):
    def make(senders=("*",), operator=False, name="test") -> str:
        return api_keys.create_key(dao, name, list(senders), operator).key
    return make


@pytest.fixture()
def key(make_key) -> str:
    return make_key(senders=["ops@example.com", "*@example.org"])




@pytest.fixture()
def fake():
    """A fake Gmail API + token server on 127.0.0.1 with one account, SENDER."""
    from fake_gmail import FakeGmail

    with FakeGmail() as fake:
        fake.add_account(SENDER)
        yield fake


@pytest.fixture()
def gmail_settings(dao, fake):
    """Runner settings that send as SENDER through the real Gmail client to `fake`, with the
    sender's OAuth grant stored (encrypted) in the database."""
    from cryptography.fernet import Fernet

    from mailjobs.transports.credentials import CredentialStore
    from runner_helpers import fast

    s = fast(dao.settings, mail_transport="gmail", gmail_api_endpoint=fake.url,
             gmail_token_uri=fake.token_uri, gmail_timeout=2.0,
             token_encryption_key=Fernet.generate_key().decode())
    CredentialStore(s, dao).store_info(SENDER, fake.authorized_user_info(SENDER), resume=True)
    return s


@pytest.fixture()
def run(dao, database, monkeypatch):
    """Invoke the `mailjobs` command line (click's runner) against the test database."""
    from click.testing import CliRunner

    from mailjobs.cli.main import cli

    monkeypatch.setenv("DATABASE_URL", database.url)
    monkeypatch.delenv("MAILJOBS_URL", raising=False)

    def invoke(*args: str):
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return invoke
