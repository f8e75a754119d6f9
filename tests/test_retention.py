"""Data retention through real rows: recipients' variables erased after RETENTION_DAYS, jobs
deleted whole after JOB_RETENTION_DAYS, bounce messages and dead runners' rows pruned, in
batches; `mailjobs purge --dry-run` changes nothing; runners purge once per PURGE_INTERVAL,
one at a time."""
from __future__ import annotations

import json
import logging

import pytest

from mailjobs import retention
from runner_helpers import count_rows, fast, running, wait_for
from test_api_enqueue import body, post

FINAL = ("completed", "completed_with_errors", "failed", "cancelled")


def h(key):
    return {"X-API-Key": key}


def new_job(client, key, n: int = 3) -> int:
    r = post(client, key, body(n))
    assert r.status_code == 202, r.json
    return r.json["job_id"]


def finish(dao, job_id: int, status: str, days_ago: float, failed: int = 0) -> None:
    """Make a stored job look as a runner leaves it: recipients sent (the first `failed` of
    them failed with gmail_400), the job `status`, finished `days_ago` days ago."""
    with dao.transaction() as cur:
        cur.execute("UPDATE job_recipients SET status = 'sent', attempts = 1, "
                    "sent_at = UTC_TIMESTAMP(6) WHERE job_id = %s", (job_id,))
        if failed:
            cur.execute("UPDATE job_recipients SET status = 'failed', error_code = 'gmail_400', "
                        "error = 'Gmail 400 invalidArgument: Invalid To header', sent_at = NULL "
                        "WHERE job_id = %s ORDER BY id LIMIT %s", (job_id, failed))
        cur.execute("UPDATE jobs SET status = %s, "
                    "started_at = UTC_TIMESTAMP(6) - INTERVAL %s SECOND - INTERVAL 1 HOUR, "
                    "finished_at = UTC_TIMESTAMP(6) - INTERVAL %s SECOND WHERE id = %s",
                    (status, int(days_ago * 86400), int(days_ago * 86400), job_id))


def age(dao, job_id: int, days_ago: float, status: str = "running") -> None:
    """An unfinished job created long ago (e.g. paused for months): never purged."""
    with dao.transaction() as cur:
        cur.execute("UPDATE jobs SET status = %s, created_at = UTC_TIMESTAMP(6) - INTERVAL %s "
                    "SECOND WHERE id = %s", (status, int(days_ago * 86400), job_id))


def variables(dao, job_id: int) -> list:
    with dao.transaction() as cur:
        cur.execute("SELECT variables FROM job_recipients WHERE job_id = %s ORDER BY id",
                    (job_id,))
        return [json.loads(v) if v is not None else None for (v,) in cur.fetchall()]


def statuses(dao, job_id: int) -> list[tuple]:
    with dao.transaction() as cur:
        cur.execute("SELECT id, status, error_code, error FROM job_recipients WHERE job_id = %s "
                    "ORDER BY id", (job_id,))
        return list(cur.fetchall())


def snapshot(dao) -> dict[str, list]:
    """Every row of the tables a purge may touch."""
    out = {}
    with dao.transaction() as cur:
        for table, order in (("jobs", "id"), ("job_recipients", "id"), ("runners", "id"),
                             ("bounce_messages", "sender_email, gmail_id"),
                             ("suppressions", "id")):
            cur.execute(f"SELECT * FROM {table} ORDER BY {order}")
            out[table] = list(cur.fetchall())
    return out


@pytest.fixture()
def no_lease(dao):
    with dao.transaction() as cur:
        cur.execute("DELETE FROM maintenance_leases")


# --- RETENTION_DAYS: variables erased, rows kept ---------------------------------------------
def test_old_finished_jobs_lose_their_recipients_variables_but_keep_rows_statuses_and_errors(
        client, key, dao):
    old = new_job(client, key, 4)
    finish(dao, old, "completed_with_errors", days_ago=91, failed=1)
    before = client.get(f"/api/jobs/{old}", headers=h(key)).json
    rows_before = statuses(dao, old)
    page_before = client.get(f"/api/jobs/{old}/recipients", headers=h(key)).json

    result = retention.purge(dao.settings, dao)

    assert variables(dao, old) == [None] * 4
    assert statuses(dao, old) == rows_before                 # rows, statuses, errors kept
    after = client.get(f"/api/jobs/{old}", headers=h(key)).json
    assert after["counts"] == before["counts"] == {"failed": 1, "sent": 3}
    assert after["errors"] == before["errors"] == [
        {"error_code": "gmail_400", "count": 1,
         "example": "Gmail 400 invalidArgument: Invalid To header"}]
    assert after["status"] == "completed_with_errors"
    assert client.get(f"/api/jobs/{old}/recipients", headers=h(key)).json == page_before
    assert (result.counts["recipients_erased"], result.counts["jobs_erased"]) == (4, 1)
    with dao.transaction() as cur:
        cur.execute("SELECT variables_erased, variables_erased_at IS NOT NULL FROM jobs "
                    "WHERE id = %s", (old,))
        assert cur.fetchone() == (1, 1)


def test_recent_and_unfinished_jobs_keep_their_variables(client, key, dao):
    recent = new_job(client, key)
    finish(dao, recent, "completed", days_ago=89)
    kept = {}
    for status in ("running", "paused", "queued", "scheduled"):
        job = new_job(client, key)
        age(dao, job, days_ago=400, status=status)     # created long ago, never finished
        kept[job] = variables(dao, job)
    old = new_job(client, key)
    finish(dao, old, "cancelled", days_ago=120)

    result = retention.purge(dao.settings, dao)

    assert variables(dao, recent) == [{"n": 0}, {"n": 1}, {"n": 2}]
    for job, values in kept.items():
        assert variables(dao, job) == values
    assert variables(dao, old) == [None] * 3
    assert result.counts["recipients_erased"] == 3


@pytest.mark.parametrize("status", FINAL)
def test_every_finished_status_is_erased(client, key, dao, status):
    job = new_job(client, key, 2)
    finish(dao, job, status, days_ago=100)
    retention.purge(dao.settings, dao)
    assert variables(dao, job) == [None, None]


def test_a_job_whose_variables_were_erased_cannot_be_retried(client, key, dao):
    job = new_job(client, key, 3)
    finish(dao, job, "completed_with_errors", days_ago=100, failed=2)
    retention.purge(dao.settings, dao)

    r = client.post(f"/api/jobs/{job}/retry", headers=h(key), json={"status": ["failed"]})

    assert r.status_code == 409
    assert "variables were erased" in r.json["message"]
    assert [s for _, s, _, _ in statuses(dao, job)].count("failed") == 2   # nothing re-queued


def test_a_job_retried_before_the_purge_is_left_alone(client, key, dao):
    job = new_job(client, key, 3)
    finish(dao, job, "completed_with_errors", days_ago=100, failed=1)
    r = client.post(f"/api/jobs/{job}/retry", headers=h(key), json={"status": ["failed"]})
    assert r.status_code == 200 and r.json["status"] == "running"

    retention.purge(dao.settings, dao)

    assert variables(dao, job) == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_retention_days_zero_erases_nothing(client, key, dao):
    job = new_job(client, key)
    finish(dao, job, "completed", days_ago=1000)
    result = retention.purge(dao.settings.with_overrides(retention_days=0), dao)
    assert variables(dao, job) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert result.counts["recipients_erased"] == 0


# --- JOB_RETENTION_DAYS: jobs deleted whole ----------------------------------------------------
def test_job_retention_deletes_old_finished_jobs_with_their_recipients(client, key, dao):
    settings = dao.settings.with_overrides(job_retention_days=365)
    gone = []
    for status in FINAL:
        job = new_job(client, key, 2)
        finish(dao, job, status, days_ago=366)
        gone.append(job)
    erased_only = new_job(client, key, 2)
    finish(dao, erased_only, "completed", days_ago=200)
    unfinished = new_job(client, key, 2)
    age(dao, unfinished, days_ago=800, status="paused")
    dao.add_suppression(dao.job(gone[0]).api_key_id, "user0@example.com", "unsubscribed",
                        gone[0], None, "one-click unsubscribe")

    result = retention.purge(settings, dao)

    for job in gone:
        assert dao.job(job) is None
        assert client.get(f"/api/jobs/{job}", headers=h(key)).status_code == 404
        assert statuses(dao, job) == []
    assert variables(dao, erased_only) == [None, None]          # past RETENTION_DAYS only
    assert variables(dao, unfinished) == [{"n": 0}, {"n": 1}]
    assert (result.counts["jobs_deleted"], result.counts["recipients_deleted"]) == (4, 8)
    assert result.counts["recipients_erased"] == 2
    assert count_rows(dao, "suppressions") == 1                   # never purged


def test_job_retention_shorter_than_unsubscribe_links_is_refused(dao):
    with pytest.raises(ValueError, match="UNSUBSCRIBE_TOKEN_DAYS"):
        dao.settings.with_overrides(job_retention_days=30, unsubscribe_token_days=90)


# --- bounce messages, dead runners -------------------------------------------------------------
def test_old_bounce_messages_and_dead_runners_rows_are_deleted(dao):
    with dao.transaction() as cur:
        cur.executemany(
            "INSERT INTO bounce_messages (sender_email, gmail_id, outcome, processed_at) "
            "VALUES ('ops@example.com', %s, 'hard', UTC_TIMESTAMP(6) - INTERVAL %s DAY)",
            [("old1", 91), ("old2", 365), ("new1", 89), ("new2", 0)])
        cur.executemany(
            "INSERT INTO runners (id, host, pid, kind, state, heartbeat_at) VALUES "
            "(%s, 'h', 1, 'worker', %s, UTC_TIMESTAMP(6) - INTERVAL %s HOUR)",
            [("dead", "busy", 25), ("stopped-long-ago", "stopped", 48),
             ("stale-an-hour", "busy", 1), ("alive", "idle", 0)])

    result = retention.purge(dao.settings, dao)

    with dao.transaction() as cur:
        cur.execute("SELECT gmail_id FROM bounce_messages ORDER BY gmail_id")
        assert [r[0] for r in cur.fetchall()] == ["new1", "new2"]
    assert sorted(r["id"] for r in dao.runners()) == ["alive", "stale-an-hour"]
    assert result.counts["bounce_messages_deleted"] == 2
    assert result.counts["runners_deleted"] == 2


# --- dry run -----------------------------------------------------------------------------------
def test_dry_run_changes_nothing_and_counts_what_a_purge_then_removes(client, key, dao):
    settings = dao.settings.with_overrides(job_retention_days=365)
    old = new_job(client, key, 5)
    finish(dao, old, "completed", days_ago=100)
    ancient = new_job(client, key, 2)
    finish(dao, ancient, "failed", days_ago=400)
    with dao.transaction() as cur:
        cur.execute("INSERT INTO bounce_messages (sender_email, gmail_id, outcome, processed_at) "
                    "VALUES ('ops@example.com', 'x', 'soft', UTC_TIMESTAMP(6) - INTERVAL 100 DAY)")
        cur.execute("INSERT INTO runners (id, host, pid, kind, state, heartbeat_at) VALUES "
                    "('dead', 'h', 1, 'worker', 'busy', UTC_TIMESTAMP(6) - INTERVAL 2 DAY)")
    assert client.post("/api/attachments", data=b"old file", content_type="text/plain",
                       headers={"X-API-Key": key}).status_code == 201
    with dao.transaction() as cur:   # unused for more than ATTACHMENT_RETENTION_DAYS (30)
        cur.execute("UPDATE attachments SET last_used_at = UTC_TIMESTAMP(6) - INTERVAL 31 DAY")
    before = snapshot(dao)

    dry = retention.purge(settings, dao, dry_run=True)

    assert snapshot(dao) == before
    expected = {"recipients_erased": 5, "jobs_erased": 1, "jobs_deleted": 1,
                "recipients_deleted": 2, "bounce_messages_deleted": 1, "runners_deleted": 1,
                "webhook_events_deleted": 0, "attachments_deleted": 1}
    assert dry.counts == expected
    assert dry.batches == 0
    assert (dry.cutoffs.now - dry.cutoffs.erase).days == 90
    assert (dry.cutoffs.now - dry.cutoffs.delete).days == 365
    assert retention.purge(settings, dao).counts == expected
    assert retention.purge(settings, dao, dry_run=True).counts == dict.fromkeys(expected, 0)


# --- batches -------------------------------------------------------------------------------------
def test_a_purge_works_in_batches_of_purge_batch_rows(client, key, dao, caplog):
    settings = dao.settings.with_overrides(purge_batch=7, purge_pause=0.001,
                                           job_retention_days=365)
    erase = new_job(client, key, 30)
    finish(dao, erase, "completed", days_ago=100, failed=4)     # two statuses: 4 + 26 rows
    delete = new_job(client, key, 15)
    finish(dao, delete, "completed", days_ago=400)
    with dao.transaction() as cur:
        cur.executemany("INSERT INTO bounce_messages (sender_email, gmail_id, outcome, "
                        "processed_at) VALUES ('ops@example.com', %s, 'hard', "
                        "UTC_TIMESTAMP(6) - INTERVAL 100 DAY)", [(f"b{i}",) for i in range(10)])

    with caplog.at_level(logging.DEBUG, logger="mailjobs.retention"):
        result = retention.purge(settings, dao)

    assert variables(dao, erase) == [None] * 30
    assert dao.job(delete) is None and count_rows(dao, "bounce_messages") == 0
    # erase: failed 4 (1 batch) + sent 26 (4 batches); delete: 15 rows = 7 + 7 + 1 with the
    # job row; bounce messages: 7 + 3
    assert result.batches == 5 + 3 + 2
    assert 0 < result.longest_batch < result.seconds
    batch_lines = [r for r in caplog.records if r.getMessage().startswith("purge batch")]
    assert len(batch_lines) == result.batches
    assert all("changed" in r.getMessage() for r in batch_lines)
    changed = [int(r.getMessage().split("changed ")[1].split()[0]) for r in batch_lines]
    assert max(changed) <= 7 + 1        # a batch never changes more than PURGE_BATCH (+ job row)
    summary = [r for r in caplog.records
               if r.name == "mailjobs.retention" and r.levelno == logging.INFO]
    assert len(summary) == 1
    assert "erased the variables of 30 recipient(s) of 1 job(s)" in summary[0].getMessage()
    assert "deleted 1 job(s) with 15 recipient(s)" in summary[0].getMessage()
    assert "10 batch(es)" in summary[0].getMessage()


# --- the command line --------------------------------------------------------------------------
def test_cli_purge_dry_run_shows_counts_and_cutoffs_and_changes_nothing(client, key, dao, run):
    job = new_job(client, key, 3)
    finish(dao, job, "completed", days_ago=100)
    before = snapshot(dao)

    out = run("purge", "--dry-run")

    assert out.exit_code == 0, out.output
    assert snapshot(dao) == before
    assert "dry run, nothing changed" in out.output
    erased_line = next(ln for ln in out.output.splitlines()
                       if ln.startswith("recipients' variables erased"))
    assert erased_line.split()[3] == "3"
    assert "finished before 20" in erased_line and "(RETENTION_DAYS=90)" in erased_line
    assert "off (JOB_RETENTION_DAYS=0)" in out.output

    as_json = json.loads(run("purge", "--dry-run", "--json").output)
    assert as_json["dry_run"] is True and as_json["counts"]["recipients_erased"] == 3
    assert as_json["cutoffs"]["jobs"] is None and as_json["cutoffs"]["variables_and_bounce_messages"]

    done = run("purge")
    assert done.exit_code == 0, done.output
    assert variables(dao, job) == [None] * 3
    assert "purged:" in done.output and "suppressions are never purged" in done.output


# --- runners ---------------------------------------------------------------------------------
def test_two_runners_purge_once_per_interval_one_at_a_time(client, key, dao, no_lease):
    job = new_job(client, key, 3)
    finish(dao, job, "completed", days_ago=100)
    settings = fast(dao.settings, mail_transport="null", purge_interval=1.0)
    runs: dict = {}     # started_at (database time) -> holder, sampled from the lease row

    def sample():
        row = dao.lease("purge")
        if row and row["started_at"] is not None:
            done_by = (row["last_result"] or "").rpartition("(runner ")[2].rstrip(")")
            runs.setdefault(row["started_at"], row["holder"] or done_by)
        return len(runs) >= 4

    with running(settings, dao, count=2) as runners:
        wait_for(sample, timeout=30, every=0.02, message="four purge runs")
        ids = {r.id for r in runners}

    assert variables(dao, job) == [None] * 3
    starts = sorted(runs)
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    assert all(g >= 1.0 for g in gaps), gaps          # never twice within PURGE_INTERVAL
    holders = {h for h in runs.values() if h in ids}
    assert holders <= ids and holders


def test_a_runner_does_not_start_a_purge_while_another_holds_the_lease(dao, no_lease):
    assert dao.claim_lease("purge", "runner-a", interval=0.0, lease=60)
    assert not dao.claim_lease("purge", "runner-b", interval=0.0, lease=60)   # a still runs
    dao.finish_lease("purge", "runner-a", "done")
    assert dao.claim_lease("purge", "runner-b", interval=0.0, lease=60)
    with dao.transaction() as cur:     # b crashed: its lease ran out
        cur.execute("UPDATE maintenance_leases SET lease_expires_at = UTC_TIMESTAMP(6) "
                    "- INTERVAL 1 SECOND")
    assert dao.claim_lease("purge", "runner-a", interval=3600, lease=60)
    dao.finish_lease("purge", "runner-a", "done")
    assert not dao.claim_lease("purge", "runner-b", interval=3600, lease=60)   # not due yet


# --- no lock on unfinished jobs' rows ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["erase", "delete"])
def test_a_purge_batch_never_locks_a_row_of_an_unfinished_job(client, key, dao, database, kind):
    """Regression: one UPDATE/DELETE ... WHERE id IN (<5,000 ids>) was planned as a table scan
    (MariaDB turns a list of over 1,000 values into a subquery), which locks every row it reads.
    Here a row of an unfinished job is held FOR UPDATE by another connection while a purge runs
    over a finished job that is most of the table: the purge must not wait for it."""
    import pymysql

    unfinished = new_job(client, key, 50)
    done = post(client, key, body(2500)).json["job_id"]
    finish(dao, done, "completed", days_ago=400)
    settings = dao.settings.with_overrides(purge_batch=2500, purge_pause=0,
                                           job_retention_days=365 if kind == "delete" else 0)
    p = settings.db
    other = pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password,
                            database=p.database, unix_socket=p.unix_socket, autocommit=False)
    try:
        with other.cursor() as cur:
            cur.execute("SELECT id FROM job_recipients WHERE job_id = %s ORDER BY id LIMIT 1 "
                        "FOR UPDATE", (unfinished,))
            assert cur.fetchone()
            result = retention.purge(settings, dao)     # would wait here (and time out)
    finally:
        other.rollback()
        other.close()
    if kind == "erase":
        assert result.counts["recipients_erased"] == 2500
    else:
        assert result.counts["recipients_deleted"] == 2500
    assert variables(dao, unfinished) == [{"n": i} for i in range(50)]
