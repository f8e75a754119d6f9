"""A deadlock inside the runner's outcome transaction (`Dao.record_outcomes`).

InnoDB answers a deadlock by rolling back the victim's whole transaction (error 1213). The DAO
then runs the whole transaction again (`_rerun_on_conflict`), so every outcome of the batch is
recorded; never half of them, silently. (Were the conflict to last, the call raises and the
runner keeps the outcomes and records them later.)

Found by the storm scenario: rows Gmail had accepted stayed `sending` until their lease expired
and another runner found them "in doubt" (with IN_DOUBT_POLICY=resend: a second email).
"""
from __future__ import annotations

import logging
import threading

from faults_tools import post_job

from mailjobs.dao_mysql import DaoError
from mailjobs.records import RetryOutcome, SentOutcome
from runner_helpers import innodb_deadlocks, lock_waits, raw_connection, wait_for

RUNNER = "r-deadlock-test"


# Regression: Dao.transaction did not call conn.begin(), so DBUtils' SteadyDB thought no
# transaction was open and, when a statement failed with a deadlock (1213), silently re-ran just
# that statement in a new transaction; the statements before it, rolled back by InnoDB, were
# lost and the commit succeeded.
def test_a_deadlock_mid_record_outcomes_is_run_again_whole(client, key, dao, caplog):
    job_id = post_job(client, key, 300)
    rows = dao.recipients_page(job_id, None, 0, 1000)
    sent_row, retry_row = rows[0].id, rows[1].id
    others = [r.id for r in rows[2:]]
    with dao.transaction() as cur:   # ours, and one another runner has taken over meanwhile
        cur.execute("UPDATE job_recipients SET status = 'sending', claimed_by = %s "
                    "WHERE id = %s", (RUNNER, sent_row))
        cur.execute("UPDATE job_recipients SET status = 'sending', claimed_by = 'r-other' "
                    "WHERE id = %s", (retry_row,))

    other = raw_connection(dao)
    outcome: dict[str, object] = {}

    def record() -> None:   # the runner's flush: one sent, one retry, in one transaction
        try:
            dao.record_outcomes(RUNNER, [SentOutcome(sent_row, "gmail-1")], [],
                                [RetryOutcome(retry_row, "gmail_429", "Gmail 429", 1.0)])
            outcome["returned"] = True
        except DaoError as exc:
            outcome["raised"] = exc

    try:
        with other.cursor() as cur:
            # Another transaction, heavier (so InnoDB picks the runner's as the victim), holds
            # the retry row; the runner locks the sent row (record_sent), then waits for the
            # retry row (record_retry); the other transaction asks for the sent row: deadlock.
            cur.execute("UPDATE job_recipients SET error = 'heavy' WHERE id BETWEEN %s AND %s",
                        (min(others), max(others)))   # a primary-key range: only those rows
            cur.execute("UPDATE job_recipients SET error = 'other' WHERE id = %s", (retry_row,))
            caplog.set_level(logging.INFO, logger="mailjobs.db")
            recorder = threading.Thread(target=record)
            recorder.start()
            # record_sent done, record_retry waiting for the lock: a condition, not a sleep
            # (polled every 0.25 s: InnoDB refreshes its INNODB_TRX cache only when it was last
            # read over 0.1 s ago, so polling faster reads the first answer, 0, for good)
            wait_for(lambda: lock_waits(dao) > 0, 20, every=0.25,
                     message="the runner's flush to wait for the lock")
            cur.execute("UPDATE job_recipients SET error = 'other' WHERE id = %s", (sent_row,))
            other.commit()
            recorder.join(30)
            assert not recorder.is_alive()
    finally:
        other.close()
    deadlocks = innodb_deadlocks(dao)
    after = {r.id: r for r in dao.recipients_page(job_id, None, 0, 2)}
    assert deadlocks > 0, "no deadlock happened: the scenario did not set up"
    status = after[sent_row].status
    assert "raised" not in outcome, outcome.get("raised")
    assert status == "sent", (
        f"record_outcomes returned normally but the sent row is {status!r}: the deadlock "
        "rolled back its UPDATE and only the failed statement was re-run")
    assert any("record_outcomes lost a lock conflict" in m and "1213" in m
               for m in caplog.messages)
