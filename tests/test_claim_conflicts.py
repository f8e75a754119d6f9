"""Claims by several runners at once: no deadlock on a new sender, and a claim that loses a lock
conflict is run again instead of sending its runner into a database-outage backoff.

Found in CI: two runners started together, both made their first claim for a sender that had no
row yet, and each one's INSERT IGNORE took a shared lock the other's FOR UPDATE waited for.
InnoDB killed one (1213); that runner backed off a whole second as if the database were down.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pymysql

from mailjobs.api_server import create_app
from mailjobs.dao_mysql import Dao
from mailjobs.rate_limit import Limits
from mailjobs.records import GiveBack
from runner_helpers import innodb_deadlocks, raw_connection
from test_api_enqueue import body, post

UNLIMITED = Limits(0, 0, 1)


def _job_for(client, key, sender: str, n: int = 3) -> int:
    b = body(n)
    b["sender_email"] = sender
    response = post(client, key, b)
    assert response.status_code == 202, response.json
    return response.json["job_id"]


def test_runners_making_their_first_claim_for_a_new_sender_do_not_deadlock(client, key, dao):
    threads_per_round, rounds = 6, 5
    before = innodb_deadlocks(dao)
    for round_no in range(rounds):
        sender = f"new{round_no}@example.org"   # no senders row yet
        jobs = [_job_for(client, key, sender) for _ in range(threads_per_round)]
        daos = [Dao(dao.settings) for _ in jobs]  # one process each, as separate runners are
        start = threading.Barrier(len(jobs))
        results: dict[int, object] = {}

        def claim(i: int, start=start, results=results, daos=daos, jobs=jobs,
                  sender=sender) -> None:   # this iteration's, bound (joined below anyway)
            start.wait()
            try:
                results[i] = len(daos[i].claim(jobs[i], sender, f"r-{i}", 10, 30, UNLIMITED)[0])
            except Exception as exc:   # noqa: BLE001 - recorded and asserted below
                results[i] = exc

        threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for d in daos:
            d.close()
        assert results == {i: 3 for i in range(len(jobs))}, results
    assert innodb_deadlocks(dao) == before, "a first claim for a new sender deadlocked"


@contextmanager
def short_lock_waits(dao: Dao) -> Iterator[pymysql.connections.Connection]:
    """innodb_lock_wait_timeout = 1 s for connections made inside (then restored); yields a
    connection of "another runner" to hold locks with."""
    other = raw_connection(dao)
    with other.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.innodb_lock_wait_timeout")
        saved = int(cur.fetchone()[0])
        cur.execute("SET GLOBAL innodb_lock_wait_timeout = 1")
    try:
        yield other
    finally:
        other.rollback()
        with other.cursor() as cur:
            cur.execute(f"SET GLOBAL innodb_lock_wait_timeout = {saved}")
        other.close()


def _held_past_the_timeout(other, lock_sql: str, args, call) -> dict[str, object]:
    """Hold a row lock in `other` while `call` runs, past one lock wait timeout, then let go."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except Exception as exc:   # noqa: BLE001 - asserted by the caller
            outcome["raised"] = exc

    with other.cursor() as cur:
        cur.execute(lock_sql, args)
        t = threading.Thread(target=run)
        t.start()
        t.join(1.6)            # one wait has timed out (1205) by now
        other.commit()         # the other transaction ends; the re-run gets the lock
        t.join(30)
    assert not t.is_alive()
    return outcome


def test_a_claim_that_times_out_on_a_lock_is_run_again(client, key, dao, caplog):
    sender = "busy@example.org"
    job_id = _job_for(client, key, sender)
    with short_lock_waits(dao) as other, caplog.at_level(logging.INFO, logger="mailjobs.db"):
        with other.cursor() as cur:
            cur.execute("INSERT IGNORE INTO senders (email, tokens, tokens_at) "
                        "VALUES (%s, 0, UTC_TIMESTAMP(6))", (sender,))
        other.commit()
        claimer = Dao(dao.settings)
        try:   # another runner's claim holds the sender's row past the lock wait timeout
            outcome = _held_past_the_timeout(
                other, "SELECT email FROM senders WHERE email = %s FOR UPDATE", (sender,),
                lambda: claimer.claim(job_id, sender, "r-waiting", 10, 30, UNLIMITED)[0])
        finally:
            claimer.close()
    assert "raised" not in outcome, outcome.get("raised")
    assert len(outcome["result"]) == 3
    assert any("claim lost a lock conflict" in r.getMessage() and "1205" in r.getMessage()
               for r in caplog.records)


def test_a_job_control_call_that_times_out_on_a_lock_is_run_again_not_a_503(
        client, key, dao, caplog):
    """Found by the fault suite: a retry by error code deadlocked with a runner's writes and the
    API answered 503 database_unavailable."""
    job_id = _job_for(client, key, "ops@example.com")
    with short_lock_waits(dao) as other, caplog.at_level(logging.INFO, logger="mailjobs.db"):
        api_dao = Dao(dao.settings)
        try:
            api = create_app(dao.settings, api_dao).test_client()
            outcome = _held_past_the_timeout(
                other, "SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,),
                lambda: api.post(f"/api/jobs/{job_id}/pause", headers={"X-API-Key": key}))
        finally:
            api_dao.close()
    assert "raised" not in outcome, outcome.get("raised")
    response = outcome["result"]
    assert response.status_code == 200, response.json
    assert response.json["status"] == "paused"
    assert any("control_job lost a lock conflict" in r.getMessage() for r in caplog.records)


def test_a_release_that_times_out_on_a_lock_is_run_again(client, key, dao, caplog):
    """The runner gives claims back (a pause, a warm stop, a claim whose answer was lost) while
    another transaction holds one of the rows: the release waits, loses, and is run again."""
    sender = "ops@example.com"
    job_id = _job_for(client, key, sender, 1)
    (claimed,) = dao.claim(job_id, sender, "r-1", 10, 30, UNLIMITED)[0]
    with short_lock_waits(dao) as other, caplog.at_level(logging.INFO, logger="mailjobs.db"):
        releaser = Dao(dao.settings)
        try:
            outcome = _held_past_the_timeout(
                other, "SELECT id FROM job_recipients WHERE id = %s FOR UPDATE", (claimed.id,),
                lambda: releaser.release("r-1", GiveBack((claimed.id,), (), {sender: 1})))
        finally:
            releaser.close()
    assert "raised" not in outcome, outcome.get("raised")
    assert outcome["result"] == 1
    assert [(r.status, r.attempts) for r in dao.recipients_page(job_id, None, 0, 10)] == \
        [("queued", 0)]   # back in the queue, its attempt refunded
    assert any("release lost a lock conflict" in r.getMessage() for r in caplog.records)


def test_a_sender_row_deleted_under_a_running_process_is_created_again(client, key, dao):
    sender = "gone@example.org"
    first, second = _job_for(client, key, sender, 1), _job_for(client, key, sender, 1)
    assert len(dao.claim(first, sender, "r-1", 10, 30, UNLIMITED)[0]) == 1
    with dao.transaction() as cur:
        cur.execute("DELETE FROM senders WHERE email = %s", (sender,))
    assert len(dao.claim(second, sender, "r-1", 10, 30, UNLIMITED)[0]) == 1
    assert [s["email"] for s in dao.senders()] == [sender]


def test_a_runner_never_claims_its_own_expired_claims_again(client, key, dao):
    """A runner's claims whose leases ran out (it could not renew them: a database pause) are
    still in its hand; claiming them again would put each in its hand twice (two sends). Another
    runner takes them over (in doubt); their runner does not."""
    job_id = _job_for(client, key, "ops@example.com", n=3)
    first, _ = dao.claim(job_id, "ops@example.com", "r-paused", 10, 60, UNLIMITED)
    assert len(first) == 3
    with dao.transaction() as cur:   # the leases ran out while r-paused could not renew them
        cur.execute("UPDATE job_recipients SET next_attempt_at = UTC_TIMESTAMP(6) - INTERVAL 1 "
                    "SECOND, lease_expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND "
                    "WHERE job_id = %s", (job_id,))
    again, _ = dao.claim(job_id, "ops@example.com", "r-paused", 10, 60, UNLIMITED)
    assert again == []
    taken, _ = dao.claim(job_id, "ops@example.com", "r-other", 10, 60, UNLIMITED)
    assert sorted(r.id for r in taken) == sorted(r.id for r in first)
    assert all(r.in_doubt and r.attempts == 2 and r.claimed_by == "r-other" for r in taken)
