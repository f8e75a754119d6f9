"""The database stops mid-test: the API answers 503 JSON quickly, then recovers by itself."""
from __future__ import annotations

import time

import pytest

from mailjobs.dao_mysql import Dao, DatabaseUnavailable
from runner_helpers import fast, running, wait_job_done
from test_api_enqueue import body, post


@pytest.fixture()
def stoppable(database):
    if database.server is None:
        pytest.skip("needs the private test server (TEST_DATABASE_URL is set)")
    yield database.server
    database.server.start()  # whatever the test did, leave a running server behind


def test_api_answers_503_json_while_the_database_is_down_and_recovers(client, key, dao, stoppable):
    job_id = post(client, key, body(2)).json["job_id"]
    stoppable.stop()

    started = time.monotonic()
    r = post(client, key, body(2))
    elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert r.json["error"] == "database_unavailable"
    assert r.json["message"]
    assert r.headers["Retry-After"]
    assert elapsed < 10
    assert client.get(f"/api/jobs/{job_id}", headers={"X-API-Key": key}).status_code == 503
    health = client.get("/healthz")
    assert (health.status_code, health.json["database"]) == (503, "refused")

    stoppable.start()
    assert client.get("/healthz").status_code == 200
    r = post(client, key, body(2))
    assert r.status_code == 202
    assert client.get(f"/api/jobs/{r.json['job_id']}", headers={"X-API-Key": key}).json["total"] == 2


def _fill_the_pool(client, key: str, job_id: int, n: int = 4) -> None:
    """n requests at once, so the pool holds n connections afterwards."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(lambda _: client.get(f"/api/jobs/{job_id}",
                                                   headers={"X-API-Key": key}).status_code,
                              range(n)))
    assert codes == [200] * n


def test_pooled_connections_left_half_open_by_a_server_restart_answer_at_once(
        client, key, dao, stoppable):
    job_id = post(client, key, body(2)).json["job_id"]
    _fill_the_pool(client, key, job_id)
    stoppable.stop()     # the server goes; the pool still holds its connections
    stoppable.start()
    started = time.monotonic()
    r = client.get(f"/api/jobs/{job_id}", headers={"X-API-Key": key})
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and r.json["total"] == 2
    assert elapsed < 1.0, f"{elapsed:.2f} s: the stale connection was waited on"
    assert post(client, key, body(2)).status_code == 202
    assert dao.breaker.opened_count == 0


def test_a_pooled_connection_the_server_closed_a_moment_ago_is_not_used(client, key, dao):
    """Within PING_IDLE of its last use a connection is not pinged; a connection the server
    closed (KILL, as a restart does) shows an EOF on its socket and is replaced, not used."""
    from runner_helpers import raw_connection
    job_id = post(client, key, body(2)).json["job_id"]
    _fill_the_pool(client, key, job_id)
    admin = raw_connection(dao)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT id FROM information_schema.PROCESSLIST WHERE db = DATABASE() "
                        "AND id <> CONNECTION_ID()")
            for (pid,) in cur.fetchall():
                cur.execute(f"KILL CONNECTION {int(pid)}")
    finally:
        admin.close()
    for _ in range(4):   # every pooled connection was killed: each is replaced
        r = client.get(f"/api/jobs/{job_id}", headers={"X-API-Key": key})
        assert r.status_code == 200, r.json


def test_healthz_after_a_restart_it_did_not_see(client, dao, stoppable):
    """/healthz keeps a connection of its own; a restart between two checks closed it."""
    assert client.get("/healthz").json["database"] == "ok"
    stoppable.stop()
    stoppable.start()
    r = client.get("/healthz")
    assert r.json["database"] == "ok", r.json


class _ClaimAnswerLost(Dao):
    """The database commits a claim and its answer never reaches the runner, once: what a link
    that drops (or a server that freezes) right after the COMMIT went out looks like from the
    client. The fault is at the client's edge; the database is the real one."""
    lost = 1

    def claim_checked(self, *args, **kwargs):
        result = super().claim_checked(*args, **kwargs)
        if self.lost and result[0]:
            self.lost -= 1
            raise DatabaseUnavailable("lost the answer to the claim's COMMIT", kind="timeout")
        return result


def test_a_claim_committed_whose_answer_was_lost_is_given_back_and_sent_once(client, key, dao):
    job_id = post(client, key, body(30)).json["job_id"]
    lossy = _ClaimAnswerLost(dao.settings)
    try:
        with running(fast(dao.settings, claim_batch=10), lossy):
            # before: the lost claim's rows stayed `sending` under the runner's name for good
            # (no other runner takes a live runner's claims, and it did not know it held them)
            assert wait_job_done(dao, job_id, 30) == "completed"
    finally:
        lossy.close()
    assert lossy.lost == 0   # the fault did happen
    with dao.transaction() as cur:
        cur.execute("SELECT status, attempts, COUNT(*) FROM job_recipients WHERE job_id = %s "
                    "GROUP BY status, attempts", (job_id,))
        rows = [tuple(r) for r in cur.fetchall()]
    assert rows == [("sent", 1, 30)]   # each sent once, the lost claim's attempt refunded
