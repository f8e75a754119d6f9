"""The runner over a far database (issue 12): writing outcomes does not hold up the sends, and
claims grow with the time a claim pass takes (a slow round trip), within their bounds."""
from __future__ import annotations

import threading

import pymysql
import pytest

from latency_proxy import LatencyProxy
from mailjobs.dao_mysql import Dao
from mailjobs.job_runner import JobRunner
from mailjobs.transports import factory as transports
from mailjobs.transports.null import NullTransport
from runner_helpers import fast, recipients, running, wait_for, wait_job_done
from test_api_enqueue import body, post


class GatedSends:
    """Null transports that count every send; the first send waits until the test says go
    (so the test can lock that recipient's row before its outcome is written)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[int] = []
        self.first: int | None = None
        self.go = threading.Event()

    def factory(self) -> NullTransport:
        gate = self

        class Gated(NullTransport):
            def send(self, msg):
                with gate.lock:
                    gate.sent.append(msg.recipient_id)
                    first = len(gate.sent) == 1
                    if first:
                        gate.first = msg.recipient_id
                if first:
                    gate.go.wait(30)
                return super().send(msg)

        return Gated()


def test_sends_go_on_while_an_outcome_write_waits(client, key, dao):
    """The first outcome's write waits on a row lock (as a write over a slow link waits on its
    round trips): the runner goes on claiming and sending all the other recipients meanwhile,
    and every outcome is written once the lock goes."""
    n = 60
    # small claims: sending the 59 others needs many claims while the write waits
    settings = fast(dao.settings, mail_transport="null", claim_batch=5, runner_concurrency=1,
                    record_flush_rows=1)
    job_id = post(client, key, body(n)).json["job_id"]
    gate = GatedSends()
    p = dao.params
    locker = pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password,
                             database=p.database, unix_socket=p.unix_socket, autocommit=False)
    try:
        with running(settings, dao, factory=gate.factory):
            first = wait_for(lambda: gate.first, message="the first send")
            with locker.cursor() as cur:
                cur.execute("SELECT id FROM job_recipients WHERE id = %s FOR UPDATE", (first,))
            gate.go.set()   # its send returns; the write of its outcome waits on the lock
            wait_for(lambda: len(gate.sent) == n, timeout=20,
                     message=f"all {n} sends while the first outcome's write waits",
                     on_timeout=lambda: f" (sent {len(gate.sent)})")
            rows = {r.id: r for r in recipients(dao, job_id)}
            assert rows[first].status == "sending", "the write did not wait on the lock"
            locker.rollback()
            assert wait_job_done(dao, job_id) == "completed"
    finally:
        gate.go.set()
        locker.close()
    rows = recipients(dao, job_id)
    assert {r.status for r in rows} == {"sent"}
    assert sorted(gate.sent) == sorted(r.id for r in rows), "a recipient was sent twice"


class CountingDao(Dao):
    """The real Dao, counting the rows of each claim."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.claims: list[int] = []

    def claim_checked(self, *args, **kwargs):
        rows, reason, suppressed = super().claim_checked(*args, **kwargs)
        self.claims.append(len(rows))
        return rows, reason, suppressed


@pytest.fixture()
def socket_path(database):
    if database.server is None:
        pytest.skip("needs the private test server (TEST_DATABASE_URL is set)")
    return str(database.server.socket)


def test_claims_grow_with_the_round_trip_time(client, key, dao, socket_path):
    """25 ms each way: a claim pass takes several round trips (>= 0.3 s), so a claim takes
    many CLAIM_BATCHes at once instead of CLAIM_BATCH; the job is still sent exactly once."""
    n, batch = 400, 10
    job_id = post(client, key, body(n)).json["job_id"]
    with LatencyProxy(socket_path, 0.025) as proxy:
        settings = fast(dao.settings, mail_transport="null", claim_batch=batch,
                        runner_concurrency=2,
                        database_url=proxy.url(dao.params.database))
        far = CountingDao(settings)
        try:
            with running(settings, far):
                assert wait_job_done(far, job_id, timeout=120) == "completed"
        finally:
            far.close()
    assert max(far.claims) >= 5 * batch, far.claims
    rows = recipients(dao, job_id)
    assert {r.status for r in rows} == {"sent"} and len(rows) == n
    assert all(r.attempts == 1 for r in rows), "a recipient was claimed twice"


def _runner(dao, **overrides) -> JobRunner:
    settings = fast(dao.settings, mail_transport="null", **overrides)
    return JobRunner(settings, dao, transports.transport_factory(settings, dao))


def test_claim_size_follows_the_claim_pass_within_its_bounds(dao):
    """The sizing rules, from a measured send rate and claim pass duration."""
    r = _runner(dao, claim_batch=100, claim_batch_max=5000, runner_concurrency=4,
                lease_seconds=60)
    r._rate = 2000.0
    r._pass_seconds = 0.005                 # a near database: as before
    assert r._claim_limit() == 100
    assert r._capacity() == 100
    r._pass_seconds = 0.2                   # 10 near passes' time: 10 CLAIM_BATCHes a claim
    assert r._claim_limit() == 1000
    assert r._capacity() == 1200            # HOLD_CYCLES passes (0.6 s) of 2,000/s
    r._pass_seconds = 1.5                   # 50 ms each way: up to CLAIM_BATCH_MAX a claim
    assert r._claim_limit() == 5000
    assert r._capacity() == 9000            # 3 passes (4.5 s) of 2,000/s
    r._rate = 20.0                          # a slow transport holds only what it sends
    assert r._capacity() == 90              # in HOLD_CYCLES passes (4.5 s)

    short = _runner(dao, claim_batch=100, claim_batch_max=5000, lease_seconds=4)
    short._rate, short._pass_seconds = 2000.0, 1.5
    assert short._capacity() == 2000 * 2    # never more than half the lease guard (4 s)
