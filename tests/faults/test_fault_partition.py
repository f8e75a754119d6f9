"""Scenarios on a real network between hosts (tests/faults/netns.py: two network namespaces
joined by a veth pair, MariaDB on TCP in one of them; skipped, with the reason, where the
machine cannot make namespaces):

1. the link goes silent mid-job (a blackhole route: packets vanish, no RST) for longer than
   every timeout (FAULTS_SCALE=11.2 gives the 40 s of the issue), then comes back: the
   expectations of tests/faults/outage.py, as for a frozen server;
2. one worker, in the far namespace, is cut off from the database for 2 x LEASE_SECONDS while
   another worker goes on: every recipient is sent exactly once (IN_DOUBT_POLICY=check), and
   the cut-off worker's late outcomes overwrite nothing of the other's.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from faults_tools import assert_exactly_once, duration, job_body, report, wait_final, wait_for
from netns import Network, unavailable
from outage import outage_mid_job

from mailjobs import api_keys
from mailjobs.dao_mysql import Dao
from mailjobs.db.migrations import apply_migrations
from mailjobs.transports.credentials import CredentialStore
from runner_helpers import SENDER, fast, running

ROOT = Path(__file__).resolve().parents[2]
DB = "mailjobs_partition"
LEASE, SEND, TIMEOUT = 10, 3.0, 4.0   # as in test_fault_cut_off_worker.py, which says why


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(f"no real network for the partition tests: {reason}")
    net = Network(tmp_path_factory.mktemp("netns")).create()
    try:
        net.start_database(DB)
        net.direct_url = f"mysql://root@localhost/{DB}?unix_socket={net.server.socket}"
        net.link_url = f"mysql://root@localhost/{DB}?unix_socket={net.db_relay()}"
        net.tcp_url = f"mysql://root@{net.db_addr}:3306/{DB}"
        from mailjobs.settings import DatabaseParams
        apply_migrations(DatabaseParams.from_url(net.direct_url))
        yield net
    finally:
        net.close()


@pytest.fixture()
def far(network, dao, fake):
    """Settings and an observer Dao on the far server (its own Unix socket: not over the link),
    with SENDER's grant stored; the fake Gmail as in the root conftest."""
    settings = fast(dao.settings, database_url=network.direct_url, mail_transport="gmail",
                    gmail_api_endpoint=fake.url, gmail_token_uri=fake.token_uri,
                    gmail_timeout=6.0, token_encryption_key=Fernet.generate_key().decode())
    observer = Dao(settings)
    CredentialStore(settings, observer).store_info(SENDER, fake.authorized_user_info(SENDER),
                                                   resume=True)
    yield settings, observer
    observer.close()


def test_the_link_to_the_database_goes_silent_mid_job(network, far, fake, caplog):
    settings, observer = far
    key = api_keys.create_key(observer, "partition", ["*"], True).key

    class Blackhole:
        freeze = staticmethod(network.cut)
        thaw = staticmethod(network.restore)

    outage_mid_job("partition", settings.with_overrides(database_url=network.link_url),
                   observer, key, fake, Blackhole(), caplog, duration(12))


def _claimed_by(dao: Dao, runner_id: str) -> int:
    with dao.transaction() as cur:
        cur.execute("SELECT COUNT(*) FROM job_recipients WHERE claimed_by = %s AND "
                    "status = 'sending'", (runner_id,))
        return int(cur.fetchone()[0])


def _worker_ids(dao: Dao) -> set[str]:
    return {r["id"] for r in dao.runners(100)}


def test_a_worker_cut_off_in_its_own_namespace_does_not_race_the_other(
        network, far, fake, tmp_path):
    settings, observer = far
    key = api_keys.create_key(observer, "cut-off", ["*"]).key
    from mailjobs.api_server import create_app
    client = create_app(settings, observer).test_client()
    n = 16
    fake.send_latency = SEND
    gmail_port = 18000 + os.getpid() % 1000
    network.gmail_in_app(int(fake.url.rsplit(":", 1)[1].strip("/")), gmail_port)
    env = {**os.environ, "DATABASE_URL": network.tcp_url, "MAIL_TRANSPORT": "gmail",
           "GMAIL_API_ENDPOINT": f"http://127.0.0.1:{gmail_port}/",
           "GMAIL_TOKEN_URI": f"http://127.0.0.1:{gmail_port}/token",
           "TOKEN_ENCRYPTION_KEY": settings.token_encryption_key, "GMAIL_TIMEOUT": str(TIMEOUT),
           "LEASE_SECONDS": str(LEASE), "RUNNER_CONCURRENCY": "4", "CLAIM_BATCH": "8",
           "IN_DOUBT_POLICY": "check", "POLL_INTERVAL": "0.05", "HEARTBEAT_INTERVAL": "0.5",
           "RECORD_FLUSH_INTERVAL": "0.1", "SENDER_RATE_PER_MINUTE": "0",
           "SENDER_DAILY_CAP": "0", "DB_BACKOFF_MAX": "1", "DB_CONNECT_TIMEOUT": "3",
           "DB_READ_TIMEOUT": "10", "DB_WRITE_TIMEOUT": "10", "LOG_LEVEL": "INFO",
           "PYTHONUNBUFFERED": "1", "EMBEDDED_RUNNER": "0"}
    r = client.post("/api/jobs/send_template_emails", json=job_body(n), headers={"X-API-Key": key})
    assert r.status_code == 202, r.json
    job_id = r.json["job_id"]
    before = _worker_ids(observer)
    log_path = tmp_path / "cut-off-worker.log"
    with open(log_path, "w") as out:
        worker = network.popen(network.app, [sys.executable, "-m", "mailjobs.job_runner"],
                               env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        cut_off = wait_for(lambda: (_worker_ids(observer) - before) or None, 30,
                           "the far worker's heartbeat").pop()
        wait_for(lambda: _claimed_by(observer, cut_off) >= 8, 30, "the far worker's claims",
                 on_timeout=lambda: log_path.read_text()[-3000:])
        network.cut()
        cut_at = time.monotonic()
        other_settings = settings.with_overrides(lease_seconds=LEASE, runner_concurrency=12,
                                                 claim_batch=8, in_doubt_policy="check",
                                                 gmail_timeout=TIMEOUT)
        other_dao = Dao(other_settings)
        try:
            with running(other_settings, other_dao):
                wait_for(lambda: time.monotonic() - cut_at >= 2 * LEASE, 3 * LEASE,
                         "the cut to last 2 x LEASE_SECONDS", every=0.1)
                network.restore()
                status = wait_final(observer, job_id, 120)
                # the far worker writes its late outcomes once it reaches the database again
                wait_for(lambda: cut_off in {r["id"] for r in observer.live_runners(1.5)},
                         30, "the far worker's heartbeat again, back on the link")
        finally:
            other_dao.close()
    finally:
        worker.terminate()
        worker.wait(30)
    text = log_path.read_text()
    assert status == "completed"
    assert observer.recipient_counts(job_id) == {"sent": n}
    assert_exactly_once(fake, observer, job_id, n)
    assert "Traceback" not in text, text[-3000:]
    report("partition_cut_off_worker", recipients=n, lease=LEASE,
           held_back=text.count("lease_expired"))
