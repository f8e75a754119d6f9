"""Benchmark of POST /api/jobs/send_template_emails (issue 3). Not a test: it prints figures.

What it does, in one run:

- starts a private MariaDB in a temporary directory (or uses --database-url / BENCH_DATABASE_URL),
  creates the database, applies the migrations and creates an API key;
- starts the real server as a subprocess (`.venv/bin/mailjobs serve`), so the server's RSS is
  measured apart from this client (sampled from /proc/<pid>/status every 50 ms);
- for each size N: builds one JSON body of N recipients, POSTs it over HTTP `repeats` times
  (after `--warmup` unmeasured POSTs) and checks each answer (202, recipients == N);
- for each size N: the physical floor, a bare pymysql `executemany` of the same rows with the same
  INSERT as queries.sql `insert_recipients`, batches of INSERT_BATCH, one commit, into a real
  jobs row, the same number of times;
- prints a markdown table (p50, p95, floor p50, ratio, targets) and the server RSS lines.

Fairness: before each size, and again between the API runs and the floor runs of a size, the
bench's rows are removed (private server: TRUNCATE job_recipients + DELETE jobs; external server:
DELETE of the bench key's jobs only, recipients go by ON DELETE CASCADE), so both measurements of
a size start from the same table state and grow it the same way.

    cd /work/main && .venv/bin/python bench/enqueue.py [--sizes 1000,10000,100000] [--repeats 20,10,3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import requests

from benchlib import percentile, rss_kb
from mailjobs import (
    api_keys,
    defaults,
)
from mailjobs.dao_mysql import Dao
from mailjobs.db.local_mariadb import LocalMariaDB
from mailjobs.db.migrations import apply_migrations
from mailjobs.records import NewJob
from mailjobs.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

BENCH_DB = "mailjobs_bench"
SENDER = "bench@example.com"
DEFAULT_SIZES = [1_000, 10_000, 100_000]
DEFAULT_REPEATS = {1_000: 20, 10_000: 10, 100_000: 3}
# Targets from the spec (issue 3), the ratios and the RSS of one POST from issue 17.
P50_TARGET_MS = {1_000: 50.0, 10_000: 500.0, 100_000: 5_000.0}
RATIO_TARGET = {1_000: 2.0, 10_000: 1.5, 100_000: 1.5}
RSS_GROWTH_TARGET_MB = 300.0          # over the whole run, against the server's start
ONE_POST_TARGET_MB = 64.0             # one POST of the largest size on a warmed-up server
DEV_KEY_FILE = ROOT / "var" / "dev_api_key"


# --- helpers ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def mb(kb: float) -> float:
    return kb / 1024.0


class RssSampler(threading.Thread):
    """Samples VmRSS of one pid every `interval` s; `mark()` starts a new window's maximum."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid = pid
        self.interval = interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.peak_kb = 0
        self.window_peak_kb = 0
        self.samples = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self) -> int | None:
        value = rss_kb(self.pid)
        if value is not None:
            with self.lock:
                self.samples += 1
                self.peak_kb = max(self.peak_kb, value)
                self.window_peak_kb = max(self.window_peak_kb, value)
        return value

    def mark(self) -> None:
        with self.lock:
            self.window_peak_kb = 0

    def window_peak(self) -> int:
        with self.lock:
            return self.window_peak_kb

    def stop(self) -> None:
        self.stop_event.set()
        self.join(2)


@dataclass
class SizeResult:
    size: int
    repeats: int
    api_ms: list[float] = field(default_factory=list)
    bare_ms: list[float] = field(default_factory=list)
    rss_window_peak_kb: int = 0


# --- payload ----------------------------------------------------------------------------------
def recipients(n: int) -> list[dict]:
    plans = ("free", "pro", "team")
    return [{"email": f"user{i:06d}@example.com", "name": f"User {i:06d}",
             "variables": {"code": f"C{i:06d}", "plan": plans[i % 3]}} for i in range(n)]


def body_for(rows: list[dict]) -> bytes:
    doc = {
        "sender_email": SENDER,
        "from_name": "Bench",
        "template": {
            "subject": "Hello {{ name }}, your {{ plan }} code",
            "html": "<p>Hi {{ name }},</p><p>your code is <b>{{ code }}</b> ({{ plan }}).</p>",
            "text": "Hi {{ name }},\nyour code is {{ code }} ({{ plan }}).\n",
        },
        "recipients": rows,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


# --- database ---------------------------------------------------------------------------------
def connect(settings: Settings) -> pymysql.connections.Connection:
    p = settings.db
    return pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password,
                           database=p.database, unix_socket=p.unix_socket, charset="utf8mb4",
                           autocommit=False, init_command="SET time_zone = '+00:00'")


def clear_rows(conn: pymysql.connections.Connection, key_id: int, private: bool) -> None:
    with conn.cursor() as cur:
        if private:
            cur.execute("TRUNCATE TABLE job_recipients")
            cur.execute("DELETE FROM jobs")
        else:  # never touch other people's rows on a shared server
            cur.execute("DELETE FROM jobs WHERE api_key_id = %s", (key_id,))
    conn.commit()


def bare_insert(conn: pymysql.connections.Connection, dao: Dao, key_id: int,
                rows: list[dict]) -> float:
    """One jobs row (untimed, stored by the DAO itself), then the recipients like
    Dao.create_job stores them, timed; ms."""
    job_id = dao.create_job(NewJob(key_id, SENDER, "Bench", None, "s", "h", "t", {}, len(rows),
                                   0, None, None), [])
    args = [(job_id, r["email"], r["name"], json.dumps(r["variables"]), None, None,
             None, None)   # locale, locale_used, metadata, attachments
            for r in rows]
    sql = dao.queries["insert_recipients"]
    batch = defaults.INSERT_BATCH
    t0 = time.perf_counter()
    with conn.cursor() as cur:
        for start in range(0, len(args), batch):
            cur.executemany(sql, args[start:start + batch])
    conn.commit()
    return (time.perf_counter() - t0) * 1000.0


def server_version(conn: pymysql.connections.Connection) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        return str(cur.fetchone()[0])


# --- server -----------------------------------------------------------------------------------
def start_server(url: str, port: int, log_path: Path, large: int = 4) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(DATABASE_URL=url, PORT=str(port), HOST="127.0.0.1", LOG_LEVEL="WARNING",
               LARGE_ENQUEUE_CONCURRENCY=str(max(1, large)),
               # measure the enqueue path only: no runner thread claiming the jobs we store
               EMBEDDED_RUNNER="0")
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mailjobs"), "serve"], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{tail(log_path)}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer /healthz within 60 s:\n{tail(log_path)}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def server_python_pid(proc: subprocess.Popen) -> int:
    """The console script is a python script run directly (its shebang is the venv python), so
    the Popen pid is the server's python process. Check that, and follow a single child if
    `mailjobs` ever becomes a wrapper that forks."""
    pid = proc.pid
    for _ in range(3):
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        if exe.startswith("python"):
            return pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) != 1:
            break
        pid = int(children[0])
    raise RuntimeError(f"cannot find the python server process under pid {proc.pid}")


# --- the run ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                    help="comma-separated recipient counts (default 1000,10000,100000)")
    ap.add_argument("--repeats", default=None,
                    help="comma-separated repeats per size (default 20,10,3 for 1k,10k,100k; "
                         "one value applies to all sizes)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="unmeasured POSTs before each size's measured ones (default 1)")
    ap.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"),
                    help="use this server instead of a private one (env BENCH_DATABASE_URL); "
                         "only the bench key's jobs are deleted there")
    ap.add_argument("--strict", action="store_true",
                    help="exit with status 1 when a target is missed")
    ap.add_argument("--one-post", action=argparse.BooleanOptionalAction, default=True,
                    help="first, the RSS growth of one POST of the largest size on a server "
                         "warmed up by one POST of 1,000 (issue 17's < 64 MB)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    ap.add_argument("--concurrent", type=int, default=4,
                    help="then this many POSTs of the largest size at once (the server's "
                         "LARGE_ENQUEUE_CONCURRENCY set to it), their RSS growth (0: skip)")
    args = ap.parse_args(argv)
    args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    if args.repeats is None:
        args.repeats = [DEFAULT_REPEATS.get(n, 3) for n in args.sizes]
    else:
        reps = [int(r) for r in args.repeats.split(",") if r.strip()]
        if len(reps) == 1:
            reps = reps * len(args.sizes)
        if len(reps) != len(args.sizes):
            ap.error("--repeats needs one value, or one per size")
        args.repeats = reps
    return args


def run_size(size: int, repeats: int, warmup: int, session: requests.Session, base: str,
             key: str, conn, dao: Dao, key_id: int, private: bool,
             sampler: RssSampler) -> SizeResult:
    result = SizeResult(size, repeats)
    rows = recipients(size)
    body = body_for(rows)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    url = f"{base}/api/jobs/send_template_emails"
    print(f"[{size:,}] body {len(body) / 1e6:.1f} MB; {warmup} warm-up + {repeats} POSTs",
          file=sys.stderr, flush=True)
    clear_rows(conn, key_id, private)
    sampler.mark()
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        resp = session.post(url, data=body, headers=headers, timeout=300)
        ms = (time.perf_counter() - t0) * 1000.0
        if resp.status_code != 202:
            raise RuntimeError(f"POST of {size} recipients: HTTP {resp.status_code}: "
                               f"{resp.text[:500]}")
        answer = resp.json()
        if answer.get("recipients") != size or answer.get("duplicates_removed") != 0:
            raise RuntimeError(f"POST of {size} recipients answered {answer}")
        if i >= warmup:
            result.api_ms.append(ms)
    time.sleep(0.5)  # let the sampler see the server after the last answer
    sampler.sample()
    result.rss_window_peak_kb = sampler.window_peak()
    print(f"[{size:,}] bare INSERT x{repeats}", file=sys.stderr, flush=True)
    clear_rows(conn, key_id, private)
    for i in range(warmup + repeats):
        ms = bare_insert(conn, dao, key_id, rows)
        if i >= warmup:
            result.bare_ms.append(ms)
    clear_rows(conn, key_id, private)
    return result


def run_one_post(size: int, base: str, key: str, conn, key_id: int, private: bool,
                 sampler: RssSampler) -> tuple[int, int]:
    """RSS before and peak of one POST of `size` recipients, on a server that has served one
    POST of 1,000 first (its lazy imports, pools and caches are not the large POST's)."""
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    url = f"{base}/api/jobs/send_template_emails"
    body = body_for(recipients(size))
    with requests.Session() as s:
        for n in (1_000, size):
            if n == size:
                time.sleep(1.0)
                before = sampler.sample() or 0
                sampler.mark()
            resp = s.post(url, data=body if n == size else body_for(recipients(n)),
                          headers=headers, timeout=600)
            if resp.status_code != 202:
                raise RuntimeError(f"POST of {n} recipients: HTTP {resp.status_code}")
    time.sleep(0.5)
    sampler.sample()
    clear_rows(conn, key_id, private)
    return before, sampler.window_peak()


def run_concurrent(n: int, size: int, base: str, key: str, conn, key_id: int, private: bool,
                   sampler: RssSampler) -> tuple[int, int, int, int, float, list[int]]:
    """n POSTs of `size` recipients at once (one connection each); RSS before and peak."""
    body = body_for(recipients(size))
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    clear_rows(conn, key_id, private)
    print(f"[{n} x {size:,}] concurrent POSTs", file=sys.stderr, flush=True)
    time.sleep(1.0)
    before = sampler.sample() or 0
    sampler.mark()
    answers: list[int] = []

    def one() -> None:
        with requests.Session() as s:
            answers.append(s.post(f"{base}/api/jobs/send_template_emails", data=body,
                                  headers=headers, timeout=600).status_code)

    threads = [threading.Thread(target=one) for _ in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    time.sleep(0.5)
    sampler.sample()
    clear_rows(conn, key_id, private)
    return n, size, before, sampler.window_peak(), seconds, answers


def report(results: list[SizeResult], rss_before_kb: int, rss_after_kb: int, peak_kb: int,
           largest_peak_kb: int, largest: int, version: str, client_peak_kb: int) -> bool:
    ok = True
    print()
    print(f"MariaDB {version}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}; "
          f"INSERT_BATCH {defaults.INSERT_BATCH}")
    print()
    print("| recipients | repeats | API p50 ms | API p95 ms | bare INSERT p50 ms | ratio | target |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        p50 = statistics.median(r.api_ms)
        p95 = percentile(r.api_ms, 0.95)
        bare = statistics.median(r.bare_ms)
        ratio = p50 / bare
        target = P50_TARGET_MS.get(r.size)
        parts = []
        if target is not None:
            met = p50 < target
            ok &= met
            parts.append(f"p50 < {target:,.0f} ms {'met' if met else 'MISSED'}")
        ratio_target = RATIO_TARGET.get(r.size, 1.5)
        met = ratio <= ratio_target
        ok &= met
        parts.append(f"ratio ≤ {ratio_target:g}× {'met' if met else 'MISSED'}")
        print(f"| {r.size:,} | {r.repeats} | {p50:,.1f} | {p95:,.1f} | {bare:,.1f} | "
              f"{ratio:.2f}× | {'; '.join(parts)} |")
    growth = mb(largest_peak_kb - rss_before_kb)
    met = growth < RSS_GROWTH_TARGET_MB
    ok &= met
    print()
    print(f"server RSS before the runs: {mb(rss_before_kb):.1f} MB")
    print(f"server RSS max during/after the {largest:,} runs: {mb(largest_peak_kb):.1f} MB "
          f"(growth {growth:+.1f} MB; target < {RSS_GROWTH_TARGET_MB:.0f} MB "
          f"{'met' if met else 'MISSED'})")
    print(f"server RSS at the end: {mb(rss_after_kb):.1f} MB; max over the whole run "
          f"{mb(peak_kb):.1f} MB")
    print(f"client (this process) max RSS: {mb(client_peak_kb):.1f} MB")
    print()
    print("all targets met" if ok else "some targets MISSED")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM runs the finally blocks like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="mjbench-"))
    local: LocalMariaDB | None = None
    proc: subprocess.Popen | None = None
    sampler: RssSampler | None = None
    conn = None
    dao: Dao | None = None
    # `mailjobs serve` writes a development key for *its* database into var/dev_api_key; keep
    # the developer's file as it was.
    saved_dev_key = DEV_KEY_FILE.read_bytes() if DEV_KEY_FILE.exists() else None
    try:
        if args.database_url:
            url, private = args.database_url, False
        else:
            local = LocalMariaDB(tmp / "db")
            local.start()
            local.create_database(BENCH_DB)
            url, private = local.url(BENCH_DB), True
        settings = Settings(database_url=url)
        apply_migrations(settings.db)
        dao = Dao(settings)
        issued = api_keys.create_key(dao, "bench", ["*"])
        conn = connect(settings)
        version = server_version(conn)

        port = free_port()
        proc = start_server(url, port, tmp / "server.log", args.concurrent)
        pid = server_python_pid(proc)
        sampler = RssSampler(pid)
        sampler.start()
        time.sleep(0.5)
        rss_before = sampler.sample() or 0
        base = f"http://127.0.0.1:{port}"
        print(f"server pid {pid} on {base}, RSS {mb(rss_before):.1f} MB; database {url}",
              file=sys.stderr, flush=True)

        results = []
        if args.one_post:
            before_kb, peak_kb = run_one_post(max(args.sizes), base, issued.key, conn, issued.id,
                                              private, sampler)
            growth = mb(peak_kb - before_kb)
            met = growth < ONE_POST_TARGET_MB
            print(f"one POST of {max(args.sizes):,} recipients on a warmed-up server: RSS "
                  f"{mb(before_kb):.1f} MB before, peak {mb(peak_kb):.1f} MB (growth "
                  f"{growth:+.1f} MB; target < {ONE_POST_TARGET_MB:.0f} MB "
                  f"{'met' if met else 'MISSED'})", flush=True)
        with requests.Session() as session:
            for size, repeats in zip(args.sizes, args.repeats, strict=False):
                results.append(run_size(size, repeats, args.warmup, session, base, issued.key,
                                        conn, dao, issued.id, private, sampler))
        time.sleep(1.0)
        rss_after = sampler.sample() or 0
        largest = max(results, key=lambda r: r.size)
        client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ok = report(results, rss_before, rss_after, sampler.peak_kb, largest.rss_window_peak_kb,
                    largest.size, version, client_peak)
        if args.concurrent > 0:
            n, size, before_kb, peak_kb, seconds, answers = run_concurrent(
                args.concurrent, max(args.sizes), base, issued.key, conn, issued.id, private,
                sampler)
            print(f"{n} concurrent POSTs of {size:,} recipients: answers {answers} in "
                  f"{seconds:.1f} s; server RSS {mb(before_kb):.1f} MB before, peak "
                  f"{mb(peak_kb):.1f} MB (growth {mb(peak_kb - before_kb):+.1f} MB)")
            ok &= answers == [202] * n
        return 1 if (args.strict and not ok) else 0
    except Exception:
        if proc is not None:
            print(f"--- server log tail ---\n{tail(tmp / 'server.log')}", file=sys.stderr)
        raise
    finally:
        if sampler is not None:
            sampler.stop()
        if dao is not None:
            dao.close()
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        if proc is not None:
            stop_server(proc)
        if local is not None:
            local.stop()
        if saved_dev_key is not None:
            DEV_KEY_FILE.write_bytes(saved_dev_key)
        elif DEV_KEY_FILE.exists():
            DEV_KEY_FILE.unlink()
        if args.keep_tmp:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
