"""Purge benchmark (issue 21, data retention): 1,000,000 recipient rows of finished jobs on a
private MariaDB, first erased (RETENTION_DAYS: variables set to NULL), then deleted whole
(JOB_RETENTION_DAYS), each with `retention.Purge` and the default PURGE_BATCH / PURGE_PAUSE.

Measured: rows/s (wall, pauses included, and inside batches only), the longest batch
(transaction), and the longest lock a concurrent writer meets: while the purge runs, two probes on
their own connections sample every few ms the rows of an UNFINISHED job whose ids lie between
the purged jobs' ids:
  - claim:  BEGIN; the runner's `due_queued` SELECT ... FOR UPDATE SKIP LOCKED (10 rows); UPDATE
            them as `claim_recipients` does (claimed_by, lease); ROLLBACK (so the rows stay
            claimable for the next sample);
  - update: BEGIN; UPDATE of one row of that job by id; COMMIT.
Each sample's time is how long that writer waited (plus its own work). The same probes run for
a few seconds before the purge (baseline: the machine's own noise).

    .venv/bin/python bench/purge.py                   # ~5 min on 2 cores
    options: --rows 1000000 --jobs 10 --probe-rows 20000 --every 0.005 --baseline 5 --keep-tmp
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import percentile

ROOT = Path(__file__).resolve().parents[1]

BENCH_DB = "mailjobs_bench_purge"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="recipient rows to purge")
    ap.add_argument("--jobs", type=int, default=10, help="finished jobs they belong to")
    ap.add_argument("--probe-rows", type=int, default=20_000,
                    help="queued recipients of the unfinished job the probes write")
    ap.add_argument("--every", type=float, default=0.005, help="seconds between probe samples")
    ap.add_argument("--baseline", type=float, default=5.0, help="seconds of probes before")
    ap.add_argument("--keep-tmp", action="store_true")
    return ap.parse_args(argv)


def connect(params):
    import pymysql

    return pymysql.connect(host=params.host, port=params.port, user=params.user,
                           password=params.password, database=params.database,
                           unix_socket=params.unix_socket, charset="utf8mb4", autocommit=False,
                           init_command="SET time_zone = '+00:00'")


def make_job(cur, key_id: int, n: int, status: str, tag: str) -> int:
    """A job with n recipients in one multi-row INSERT ... SELECT from MariaDB's sequence
    engine (seq_1_to_N), each with a 3-key variables object (~70 bytes)."""
    cur.execute("INSERT INTO jobs (api_key_id, sender_email, subject_template, text_template, "
                "status, total, started_at, finished_at) VALUES (%s, 'ops@example.com', "
                "'Hi {{ name }}', 'Your code is {{ code }}', %s, %s, UTC_TIMESTAMP(6), NULL)",
                (key_id, status, n))
    job_id = cur.lastrowid
    cur.execute(
        "INSERT INTO job_recipients (job_id, to_email, name, variables, status, attempts, sent_at) "
        "SELECT %s, CONCAT(%s, '-', seq, '@example.com'), CONCAT('User ', seq), "
        "JSON_OBJECT('code', CONCAT('C', LPAD(seq, 8, '0')), 'plan', 'pro', "
        "'first_name', CONCAT('Ann', seq)), %s, %s, %s "
        f"FROM seq_1_to_{int(n)}",
        (job_id, tag, "queued" if status == "running" else "sent",
         0 if status == "running" else 1, None))
    return job_id


class Probe(threading.Thread):
    """Samples one kind of write on the unfinished job's rows every `every` seconds."""

    def __init__(self, params, kind: str, job_id: int, ids: list[int], every: float) -> None:
        super().__init__(daemon=True, name=f"probe-{kind}")
        self.conn = connect(params)
        self.kind, self.job_id, self.ids, self.every = kind, job_id, ids, every
        self.samples: list[tuple[float, float]] = []     # (monotonic start, seconds)
        self.stop = threading.Event()
        self.empty = 0        # claims that found nothing (all 10 rows skipped as locked)

    def run(self) -> None:
        cur = self.conn.cursor()
        i = 0
        while not self.stop.is_set():
            t0 = time.monotonic()
            if self.kind == "claim":
                self.conn.begin()
                try:
                    cur.execute("SELECT id FROM job_recipients WHERE job_id = %s AND status = "
                                "'queued' AND next_attempt_at <= UTC_TIMESTAMP(6) ORDER BY "
                                "next_attempt_at LIMIT 10 FOR UPDATE SKIP LOCKED", (self.job_id,))
                    ids = [r[0] for r in cur.fetchall()]
                    if ids:
                        cur.execute("UPDATE job_recipients SET status = 'sending', claimed_by = "
                                    "'probe', lease_expires_at = UTC_TIMESTAMP(6) + INTERVAL 60 "
                                    f"SECOND WHERE id IN ({', '.join(['%s'] * len(ids))})", ids)
                    else:
                        self.empty += 1
                finally:
                    self.conn.rollback()
            else:
                self.conn.begin()
                cur.execute("UPDATE job_recipients SET attempts = attempts + 1 WHERE id = %s",
                            (self.ids[i % len(self.ids)],))
                self.conn.commit()
                i += 1
            self.samples.append((t0, time.monotonic() - t0))
            self.stop.wait(self.every)
        self.conn.close()

    def window(self, start: float, end: float) -> list[float]:
        return [s for t, s in self.samples if start <= t <= end]


def row_locks(dao) -> tuple[int, int]:
    """The server's InnoDB row lock waits so far, and their total time in ms (every waiter on
    every connection: the bench's own server, so only the probes and the purge)."""
    with dao.transaction() as cur:
        cur.execute("SHOW GLOBAL STATUS WHERE Variable_name IN "
                    "('Innodb_row_lock_waits', 'Innodb_row_lock_time')")
        values = dict(cur.fetchall())
    return int(values["Innodb_row_lock_waits"]), int(values["Innodb_row_lock_time"])


def stats_ms(values: list[float]) -> str:
    if not values:
        return "n=0"
    ms = [v * 1000 for v in values]
    return (f"n={len(ms)} p50 {statistics.median(ms):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms,"
            f" max {max(ms):.1f} ms")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mailjobs-bench-purge-"))
    from mailjobs.db.local_mariadb import LocalMariaDB

    server = LocalMariaDB(tmp / "mariadb")
    try:
        return run(args, server)
    finally:
        server.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, server) -> int:
    from mailjobs import api_keys, retention
    from mailjobs.dao_mysql import Dao
    from mailjobs.db.migrations import apply_migrations
    from mailjobs.settings import Settings

    say(f"starting a private MariaDB in {server.root}")
    server.start()
    server.create_database(BENCH_DB)
    settings = Settings(database_url=server.url(BENCH_DB), embedded_runner=False,
                        log_level="WARNING")
    apply_migrations(settings.db)
    dao = Dao(settings)
    key_id = api_keys.create_key(dao, "bench", ["*"]).id
    with dao.transaction() as cur:
        cur.execute("SELECT VERSION()")
        version = cur.fetchone()[0]

    per_job = args.rows // args.jobs
    say(f"building {args.jobs} finished jobs x {per_job:,} recipients and one unfinished job "
        f"of {args.probe_rows:,} between them")
    t = time.perf_counter()
    finished, unfinished = [], None
    conn = connect(settings.db)
    cur = conn.cursor()
    for j in range(args.jobs):
        finished.append(make_job(cur, key_id, per_job, "completed", f"f{j}"))
        conn.commit()
        if j == args.jobs // 2 - 1:
            unfinished = make_job(cur, key_id, args.probe_rows, "running", "u")
            conn.commit()
    cur.execute("UPDATE jobs SET finished_at = UTC_TIMESTAMP(6) - INTERVAL 400 DAY "
                f"WHERE id IN ({', '.join(['%s'] * len(finished))})", finished)
    conn.commit()
    cur.execute("SELECT COUNT(*) FROM job_recipients")
    total_rows = cur.fetchone()[0]
    cur.execute("SELECT id FROM job_recipients WHERE job_id = %s ORDER BY id", (unfinished,))
    probe_ids = [r[0] for r in cur.fetchall()]
    cur.execute("ANALYZE TABLE job_recipients, jobs")
    cur.fetchall()
    conn.commit()
    conn.close()
    say(f"built {total_rows:,} rows in {time.perf_counter() - t:.1f} s; unfinished job "
        f"{unfinished}: ids {probe_ids[0]}..{probe_ids[-1]}")

    report = []
    for phase, overrides in (("erase variables (RETENTION_DAYS=90)",
                              {"retention_days": 90, "job_retention_days": 0}),
                             ("delete jobs (JOB_RETENTION_DAYS=365)",
                              {"retention_days": 90, "job_retention_days": 365})):
        s = settings.with_overrides(**overrides)
        # the update probe writes the second half of the job, the claim probe takes the first
        # rows: the probes do not wait for each other
        probes = [Probe(s.db, kind, unfinished, probe_ids[len(probe_ids) // 2:], args.every)
                  for kind in ("claim", "update")]
        for p in probes:
            p.start()
        locks_before = row_locks(dao)
        base_start = time.monotonic()
        time.sleep(args.baseline)           # the bench's own waiting, not a test
        base_end = time.monotonic()
        say(f"{phase}: purging")
        locks_start = row_locks(dao)
        result = retention.Purge(s, dao).run()
        purge_end = time.monotonic()
        locks_end = row_locks(dao)
        time.sleep(0.2)
        for p in probes:
            p.stop.set()
            p.join()
        rows = (result.counts["recipients_erased"] if "erase" in phase
                else result.counts["recipients_deleted"])
        line = {
            "phase": phase, "rows": rows, "seconds": result.seconds,
            "rows_per_s": rows / result.seconds, "rows_per_busy_s": rows / result.busy,
            "batches": result.batches, "longest_batch_ms": result.longest_batch * 1000,
            "mean_batch_ms": result.busy / max(1, result.batches) * 1000,
            "counts": result.counts,
        }
        for p in probes:
            line[f"{p.kind}_baseline"] = stats_ms(p.window(base_start, base_end))
            line[f"{p.kind}_during"] = stats_ms(p.window(base_end, purge_end))
        line["empty_claims"] = probes[0].empty
        line["row_lock_waits_baseline"] = locks_start[0] - locks_before[0]
        line["row_lock_waits_during"] = locks_end[0] - locks_start[0]
        line["row_lock_wait_ms_during"] = locks_end[1] - locks_start[1]
        report.append(line)
        say(json.dumps(line, default=str))
    with dao.transaction() as cur:
        cur.execute("SELECT status, COUNT(*) FROM job_recipients WHERE job_id = %s "
                    "GROUP BY status", (unfinished,))
        left = dict(cur.fetchall())
        cur.execute("SELECT COUNT(*) FROM job_recipients")
        remaining = cur.fetchone()[0]
    dao.close()
    assert left == {"queued": args.probe_rows}, left      # the unfinished job is untouched
    assert remaining == args.probe_rows, remaining

    print()
    print(f"MariaDB {version}; {total_rows:,} rows; PURGE_BATCH={settings.purge_batch}, "
          f"PURGE_PAUSE={settings.purge_pause}")
    print("| phase | rows | wall s | rows/s (wall) | rows/s (in batches) | batches | mean batch "
          "| longest batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in report:
        print(f"| {r['phase']} | {r['rows']:,} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | "
              f"{r['rows_per_busy_s']:,.0f} | {r['batches']} | {r['mean_batch_ms']:.0f} ms | "
              f"{r['longest_batch_ms']:.0f} ms |")
    print()
    print("| phase | probe | before the purge (baseline) | during the purge |")
    print("|---|---|---|---|")
    for r in report:
        for kind in ("claim", "update"):
            print(f"| {r['phase']} | {kind} | {r[kind + '_baseline']} | {r[kind + '_during']} |")
    print()
    print("| phase | InnoDB row lock waits before / during the purge | their total time "
          "during | claims that found nothing (rows skipped as locked) |")
    print("|---|---:|---:|---:|")
    for r in report:
        print(f"| {r['phase']} | {r['row_lock_waits_baseline']} / {r['row_lock_waits_during']} "
              f"| {r['row_lock_wait_ms_during']} ms | {r['empty_claims']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
