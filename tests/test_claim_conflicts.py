"""Claims by several runners at once: no deadlock on a new sender, and a claim that loses a lock
conflict is run again instead of sending its runner into a database-outage backoff.

Found in CI: two runners started together, both made their first claim for a sender that had no
row yet, and each one's INSERT IGNORE took a shared lock the other's FOR UPDATE waited for.
InnoDB killed one (1213); that runner backed off a whole second as if the database were down.
"""
from __future__ import annotations

import logging
import threading

import pymysql

from dao_mysql import Dao
from rate_limit import Limits
from test_api_enqueue import body, post

UNLIMITED = Limits(0, 0, 1)


def _deadlocks(dao: Dao) -> int:
    with dao.transaction() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
        return int(cur.fetchone()[1])


def _job_for(client, key, sender: str, n: int = 3) -> int:
    b = body(n)
    b["sender_email"] = sender
    response = post(client, key, b)
    assert response.status_code == 202, response.json
    return response.json["job_id"]


def test_runners_making_their_first_claim_for_a_new_sender_do_not_deadlock(client, key, dao):
    threads_per_round, rounds = 6, 5
    before = _deadlocks(dao)
    for round_no in range(rounds):
        sender = f"new{round_no}@example.org"   # no senders row yet
        jobs = [_job_for(client, key, sender) for _ in range(threads_per_round)]
        daos = [Dao(dao.settings) for _ in jobs]  # one process each, as separate runners are
        start = threading.Barrier(len(jobs))
        results: dict[int, object] = {}

        def claim(i: int) -> None:
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
    assert _deadlocks(dao) == before, "a first claim for a new sender deadlocked"


def test_a_claim_that_times_out_on_a_lock_is_run_again(client, key, dao, caplog):
    sender = "busy@example.org"
    job_id = _job_for(client, key, sender)
    p = dao.params
    other = pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password,
                            database=p.database, unix_socket=p.unix_socket, autocommit=False)
    with other.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.innodb_lock_wait_timeout")
        saved = int(cur.fetchone()[0])
        cur.execute("SET GLOBAL innodb_lock_wait_timeout = 1")   # for connections made now
    claimer = Dao(dao.settings)
    outcome: dict[str, object] = {}

    def claim() -> None:
        try:
            outcome["rows"] = claimer.claim(job_id, sender, "r-waiting", 10, 30, UNLIMITED)[0]
        except Exception as exc:   # noqa: BLE001 - asserted below
            outcome["raised"] = exc

    try:
        with other.cursor() as cur:
            cur.execute("INSERT IGNORE INTO senders (email, tokens, tokens_at) "
                        "VALUES (%s, 0, UTC_TIMESTAMP(6))", (sender,))
            other.commit()
            # another runner's claim holds the sender's row past the lock wait timeout
            cur.execute("SELECT email FROM senders WHERE email = %s FOR UPDATE", (sender,))
            with caplog.at_level(logging.INFO, logger="mailjobs.db"):
                t = threading.Thread(target=claim)
                t.start()
                t.join(1.6)            # one wait has timed out (1205) by now
                other.commit()         # the other claim ends; the retry gets the lock
                t.join(30)
            assert not t.is_alive()
    finally:
        with other.cursor() as cur:
            cur.execute(f"SET GLOBAL innodb_lock_wait_timeout = {saved}")
        other.close()
        claimer.close()
    assert "raised" not in outcome, outcome.get("raised")
    assert len(outcome["rows"]) == 3
    assert any("claim lost a lock conflict" in r.getMessage() and "1205" in r.getMessage()
               for r in caplog.records)


def test_a_sender_row_deleted_under_a_running_process_is_created_again(client, key, dao):
    sender = "gone@example.org"
    first, second = _job_for(client, key, sender, 1), _job_for(client, key, sender, 1)
    assert len(dao.claim(first, sender, "r-1", 10, 30, UNLIMITED)[0]) == 1
    with dao.transaction() as cur:
        cur.execute("DELETE FROM senders WHERE email = %s", (sender,))
    assert len(dao.claim(second, sender, "r-1", 10, 30, UNLIMITED)[0]) == 1
    assert [s["email"] for s in dao.senders()] == [sender]
