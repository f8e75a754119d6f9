"""Scenario: MariaDB frozen with SIGSTOP mid-job (nothing answers at all: what a hung host or a
dead link looks like from the client: connections are accepted, packets vanish), for longer
than every timeout, then SIGCONT. Expectations: tests/faults/outage.py.
"""
from __future__ import annotations

import os
import signal

import pytest
from faults_tools import duration
from outage import outage_mid_job


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
