"""Benchmark of a far database (issue 12). Not a test: it prints markdown tables.

In one run, on a private MariaDB started in a temporary directory, reached through
tests/latency_proxy.py (a TCP proxy adding a delay each way; 0 ms is the proxy with no delay,
"direct" is the Unix socket):

1. round trips (commands sent to the server, counted by db_guard.ROUND_TRIPS) of the hot paths:
   claim, record, renew, enqueue, and the runner's whole work per 100 recipients;
2. runner throughput, null transport, 10,000 recipients, at direct / 0 / 10 / 50 ms one way
   (target at 50 ms: >= 1,000 recipients/s), with the ratio to the direct connection: "cold",
   a runner started with the job waiting (its first connections, heartbeat, purge lease and a
   first small claim while its send rate is unknown are in the time), and "warm", a runner
   that has sent a 200-recipient job before the measured one is posted (the time from the
   job's commit to its completion, as for a job posted to a running service);
3. enqueue (POST /api/jobs/send_template_emails through the Flask app) of 10,000 recipients:
   p50 direct and at 50 ms (target <= 1 s at 50 ms);
4. the API while the database is frozen (SIGSTOP): p100 over 20 concurrent requests through
   the served app (waitress, HTTP_THREADS=8), target <= DB_REQUEST_DEADLINE.

    .venv/bin/python bench/remote_db.py [--quick] [--only 1,2,3,4]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import from_tests

ROOT = Path(__file__).resolve().parents[1]


DB = "mailjobs_bench_remote"
SENDER = "bench-remote@example.com"
FINAL = ("completed", "completed_with_errors", "failed", "cancelled")
RATE_TARGET_50MS = 1000.0
ENQUEUE_P50_TARGET = 1.0


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def body(n: int, tag: str) -> dict:
    return {"sender_email": SENDER, "template": {"subject": "Hi {{ name }}",
                                                "text": "Hello {{ name }} ({{ n }})"},
            "recipients": [{"email": f"u{i:06d}.{tag}@example.com", "name": f"U {i}",
                            "variables": {"n": i}} for i in range(n)]}


class ProcessProxy:
    """tests/latency_proxy.py as a process of its own: the proxy's threads then do not take
    the measured process's CPU (its GIL), as a real network's delay takes none."""

    def __init__(self, target: str, delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "latency_proxy.py"), "tcp:127.0.0.1:0",
             f"unix:{target}", str(delay)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            self.close()
            raise RuntimeError(f"latency proxy did not start: {line}")
        self.port = int(line[1])

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> ProcessProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from mailjobs.db.local_mariadb import LocalMariaDB
        from mailjobs.db.migrations import apply_migrations
        from mailjobs.settings import Settings

        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="mj-remote-"))
        self.server = LocalMariaDB(self.tmp / "mariadb")
        self.server.start()
        self.direct_url = self.server.url(DB)
        self.base = Settings(database_url=self.direct_url, mail_transport="null",
                             sender_rate_per_minute=0, sender_daily_cap=0, poll_interval=0.05,
                             record_flush_interval=0.05, heartbeat_interval=1.0,
                             heartbeat_log_interval=60, embedded_runner=False,
                             bounce_check_interval=0, log_level="WARNING")
        apply_migrations(self.base.db)
        from mailjobs import api_keys
        from mailjobs.dao_mysql import Dao
        self.dao = Dao(self.base)
        self.key = api_keys.create_key(self.dao, "bench", ["*"], True)
        self.tables: list[str] = []

    def close(self) -> None:
        self.dao.close()
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def proxy(self, delay: float):
        if self.args.in_process_proxy:   # as the first measurements were taken
            LatencyProxy = from_tests("latency_proxy").LatencyProxy
            return LatencyProxy(str(self.server.socket), delay)
        return ProcessProxy(str(self.server.socket), delay)

    def settings_for(self, url: str, **kw):
        return self.base.with_overrides(database_url=url, **kw)

    # --- 1: round trips ----------------------------------------------------------------------
    def round_trips(self) -> list[tuple[str, int, str]]:
        from mailjobs.api_server import create_app
        from mailjobs.dao_mysql import Dao
        from mailjobs.db.guard import ROUND_TRIPS
        from mailjobs.rate_limit import Limits
        from mailjobs.records import RetryOutcome, SentOutcome

        dao = Dao(self.base)
        rows = []


        client = create_app(self.base, dao).test_client()
        headers = {"X-API-Key": self.key.key}
        r = client.post("/api/jobs/send_template_emails", json=body(1000, "rt0"), headers=headers)
        job_id = r.json["job_id"]
        limits = Limits(0, 0, 5.0)
        dao.claim(job_id, SENDER, "bench-rt", 10, 60, limits)  # warm (sender row, pool)

        def measure(fn):
            time.sleep(1.1)      # the connection idle > PING_IDLE: the checkout pings, as rare
            c0 = ROUND_TRIPS.commands  # calls do; the busy case is 1 fewer
            out = fn()
            return ROUND_TRIPS.commands - c0, out

        n, (claimed, _) = measure(lambda: dao.claim(job_id, SENDER, "bench-rt", 100, 60, limits))
        ids = [x.id for x in claimed]
        rows.append(("claim (100 recipients, one job, no limits)", n, "Dao.claim"))
        n, _ = measure(lambda: dao.renew_leases("bench-rt", ids, 60))
        rows.append(("renew leases (100)", n, "Dao.renew_leases"))
        n, _ = measure(lambda: dao.record_outcomes("bench-rt", [SentOutcome(i, None) for i in ids], [], []))
        rows.append(("record 100 sent outcomes", n, "Dao.record_outcomes"))
        claimed, _ = dao.claim(job_id, SENDER, "bench-rt", 100, 60, limits)
        n, _ = measure(lambda: dao.record_outcomes(
            "bench-rt", [], [], [RetryOutcome(x.id, "gmail_5xx", "boom", 1.0) for x in claimed]))
        rows.append(("record 100 retry outcomes", n, "Dao.record_outcomes"))
        for size in (1, 10_000):
            n, r = measure(lambda: client.post("/api/jobs/send_template_emails",
                                               json=body(size, f"rt{size}"), headers=headers))  # noqa: B023 (called at once)
            assert r.status_code == 202, r.json
            rows.append((f"enqueue {size:,} recipient(s), whole request", n,
                         "POST /api/jobs/send_template_emails (key check, store, answer)"))
        dao.close()
        return rows

    def runner_round_trips(self, n: int) -> tuple[int, float]:
        """Commands per 100 recipients over a whole job (direct)."""
        from mailjobs.db.guard import ROUND_TRIPS
        job_id = self.make_job(n, "rtjob")
        c0 = ROUND_TRIPS.commands
        rate = self.run_job(self.base, job_id, n)
        return ROUND_TRIPS.commands - c0, rate

    # --- 2: runner throughput ------------------------------------------------------------------
    def make_job(self, n: int, tag: str) -> int:
        from mailjobs.api_server import create_app
        client = create_app(self.base, self.dao).test_client()
        r = client.post("/api/jobs/send_template_emails", json=body(n, tag),
                        headers={"X-API-Key": self.key.key})
        assert r.status_code == 202, r.json
        return r.json["job_id"]

    def wait_done(self, job_id: int, t0: float) -> float:
        while True:
            st = self.dao.job_statuses([job_id])[job_id]
            if st in FINAL:
                return time.perf_counter()
            if time.perf_counter() - t0 > 900:
                raise RuntimeError(f"job {job_id} not done: {self.dao.recipient_counts(job_id)}")
            time.sleep(0.02)

    def run_job(self, settings, job_id: int | None, n: int, warm_tag: str = "") -> float:
        """Recipients/s of one job. job_id None (warm): the runner first sends a 200-recipient
        job, then a job of n (tagged warm_tag) is posted and timed from its commit."""
        from mailjobs.dao_mysql import Dao
        from mailjobs.job_runner import JobRunner
        from mailjobs.transports import factory as transports

        dao = Dao(settings)
        runner = JobRunner(settings, dao, transports.transport_factory(settings, dao))
        thread = threading.Thread(target=runner.run, daemon=True)
        t0 = time.perf_counter()
        thread.start()
        try:
            if job_id is None:
                first = self.make_job(200, f"{warm_tag}w")
                self.wait_done(first, t0)
                job_id = self.make_job(n, warm_tag)
                t0 = time.perf_counter()
            t1 = self.wait_done(job_id, t0)
        finally:
            runner.stop()
            thread.join(120)
            dao.close()
        counts = self.dao.recipient_counts(job_id)
        if counts != {"sent": n}:
            raise RuntimeError(f"job {job_id}: {counts}")
        return n / (t1 - t0)

    def throughput(self, n: int) -> list[tuple[str, float, float]]:
        """(label, cold recipients/s, warm recipients/s) per link."""
        out = []
        for label, delay in (("direct (Unix socket)", None), ("proxy, 0 ms", 0.0),
                             ("proxy, 10 ms each way", 0.010), ("proxy, 50 ms each way", 0.050)):
            rates = []
            for warm in (False, True):
                tag = f"tp{len(out)}{'w' if warm else 'c'}"
                job_id = None if warm else self.make_job(n, tag)
                say(f"2  runner, {n:,} recipients, {label}, {'warm' if warm else 'cold'}")
                if delay is None:
                    rates.append(self.run_job(self.base, job_id, n, tag))
                else:
                    with self.proxy(delay) as p:
                        rates.append(self.run_job(self.settings_for(p.url(DB)), job_id, n, tag))
            out.append((label, rates[0], rates[1]))
        return out

    # --- 3: enqueue ------------------------------------------------------------------------------
    def enqueue(self, n: int, repeats: int) -> list[tuple[str, float, float]]:
        from mailjobs.api_server import create_app
        from mailjobs.dao_mysql import Dao
        out = []
        for label, delay in (("direct (Unix socket)", None), ("proxy, 50 ms each way", 0.050)):
            proxy = self.proxy(delay).__enter__() if delay is not None else None
            try:
                s = self.settings_for(proxy.url(DB)) if proxy else self.base
                dao = Dao(s)
                client = create_app(s, dao).test_client()
                payload = json.dumps(body(n, "enq")).encode()
                times = []
                for i in range(repeats + 1):
                    t = time.perf_counter()
                    r = client.post("/api/jobs/send_template_emails", data=payload,
                                    content_type="application/json",
                                    headers={"X-API-Key": self.key.key})
                    assert r.status_code == 202, r.json
                    if i:   # the first one warms the pool
                        times.append(time.perf_counter() - t)
                dao.close()
            finally:
                if proxy:
                    proxy.close()
            say(f"3  enqueue {n:,}, {label}: p50 {statistics.median(times):.3f} s")
            out.append((label, statistics.median(times), max(times)))
        return out

    # --- 4: frozen database ---------------------------------------------------------------------
    def frozen(self, deadline: float) -> tuple[float, float, int]:
        import requests

        from mailjobs.api_server import create_app
        from mailjobs.dao_mysql import Dao
        served = from_tests("served").served

        s = self.base.with_overrides(db_request_deadline=deadline, db_connect_timeout=5,
                                     db_read_timeout=30)
        dao = Dao(s)
        app = create_app(s, dao)
        job_id = self.make_job(10, "frozen")
        headers = {"X-API-Key": self.key.key}
        with served(app, 8) as base:
            assert requests.get(f"{base}/api/jobs/{job_id}", headers=headers).status_code == 200
            pid = self.server.pid()
            os.kill(pid, signal.SIGSTOP)
            try:
                def one(i: int) -> tuple[int, float]:
                    t = time.perf_counter()
                    r = requests.get(f"{base}/api/jobs/{job_id}", headers=headers, timeout=60)
                    return r.status_code, time.perf_counter() - t
                with ThreadPoolExecutor(20) as pool:
                    answers = list(pool.map(one, range(20)))
                t = time.perf_counter()
                health = requests.get(f"{base}/healthz", timeout=10)
                health_s = time.perf_counter() - t
            finally:
                os.kill(pid, signal.SIGCONT)
        dao.close()
        assert all(code == 503 for code, _ in answers), answers
        assert health.json()["database"] == "timeout", health.json()
        return max(t for _, t in answers), health_s, len(answers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="1,2,3,4")
    ap.add_argument("--in-process-proxy", action="store_true",
                    help="run the latency proxy's threads in this process (the first runs did)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    only = set(args.only.split(","))
    n = 2000 if args.quick else 10_000
    bench = Bench(args)
    try:
        if "1" in only:
            rows = bench.round_trips()
            cmds, _ = bench.runner_round_trips(n)
            print("\n| operation | round trips | what |\n|---|---|---|")
            for what, k, note in rows:
                print(f"| {what} | {k} | {note} |")
            print(f"| runner, whole job of {n:,} (null transport, direct) | "
                  f"{cmds / (n / 100):.1f} per 100 recipients | claims, records, heartbeats, "
                  "polls, finish |")
        if "2" in only:
            rates = bench.throughput(n)
            cold0, warm0 = rates[0][1], rates[0][2]
            print(f"\n| runner, null transport, {n:,} recipients | cold: recipients/s | ratio to "
                  "direct | warm: recipients/s | ratio to direct |\n|---|---|---|---|---|")
            for label, cold, warm in rates:
                print(f"| {label} | {cold:,.0f} | {cold / cold0:.2f} | {warm:,.0f} | "
                      f"{warm / warm0:.2f} |")
            for which, at50 in (("cold", rates[-1][1]), ("warm", rates[-1][2])):
                print(f"\ntarget at 50 ms ({which}): >= {RATE_TARGET_50MS:,.0f}/s: "
                      f"{'met' if at50 >= RATE_TARGET_50MS else 'NOT met'} ({at50:,.0f}/s)")
        if "3" in only:
            enq = bench.enqueue(n, 3 if args.quick else 5)
            print(f"\n| enqueue {n:,} recipients | p50 s | max s |\n|---|---|---|")
            for label, p50, worst in enq:
                print(f"| {label} | {p50:.3f} | {worst:.3f} |")
            print(f"\ntarget p50 at 50 ms <= {ENQUEUE_P50_TARGET} s: "
                  f"{'met' if enq[-1][1] <= ENQUEUE_P50_TARGET else 'NOT met'}")
        if "4" in only:
            deadline = 10.0
            p100, health_s, k = bench.frozen(deadline)
            print(f"\n| database frozen (SIGSTOP), DB_REQUEST_DEADLINE={deadline:g} | seconds |"
                  f"\n|---|---|\n| p100 of {k} concurrent GET /api/jobs/ID (8 HTTP threads) | "
                  f"{p100:.2f} |\n| /healthz | {health_s:.2f} |")
            print(f"\ntarget p100 <= deadline: {'met' if p100 <= deadline else 'NOT met'}")
    finally:
        bench.close()


if __name__ == "__main__":
    main()
