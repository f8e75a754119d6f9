"""Benchmark of GET /api/jobs/<id>/recipients.csv (issue 18). Not a test: it prints figures.

- starts a private MariaDB (benchlib.private_mariadb), applies the migrations, makes an API key
  and stores jobs of each size directly through Dao.create_job (one recipient in three then
  marked failed with an error text, one in three sent with a Gmail id, so rows look real);
- starts the real server as a subprocess (`.venv/bin/mailjobs serve`, no embedded runner) and
  samples its RSS from /proc every 20 ms;
- exports each job through the API with `requests` in streaming mode (the client counts lines
  and bytes, holds nothing), `--repeats` times, after one unmeasured export of the smallest job;
- prints per size: rows/s (median), the server's RSS before the first export of the size and its
  peak during the exports. Constant memory means the peak growth does not follow the size: the
  growth of the largest job is compared with that of the smallest in the same run.

    .venv/bin/python bench/export.py [--sizes 1000,10000,100000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests

from benchlib import private_mariadb, rss_kb
from mailjobs import api_keys
from mailjobs.dao_mysql import Dao
from mailjobs.db.migrations import apply_migrations
from mailjobs.records import NewJob, NewRecipient
from mailjobs.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SENDER = "bench@example.com"


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.peak = max(self.peak, rss_kb(self.pid) or 0)

    def reset(self) -> int:
        now = rss_kb(self.pid) or 0
        self.peak = now
        return now


def store_job(dao: Dao, key_id: int, n: int) -> int:
    recipients = [NewRecipient(f"user{i}@example.com", f"User {i}, \"nick\" {i}", {"i": i})
                  for i in range(n)]
    job_id = dao.create_job(NewJob(key_id, SENDER, "Bench", None, "s", "h", "t", {}, n, 0,
                                   None, None), recipients)
    with dao.transaction() as cur:
        cur.execute("UPDATE job_recipients SET status='failed', attempts=3, error_code="
                    "'gmail_400', error='Gmail 400 invalidArgument: Invalid To header' "
                    "WHERE job_id=%s AND id %% 3 = 0", (job_id,))
        cur.execute("UPDATE job_recipients SET status='sent', attempts=1, sent_at="
                    "UTC_TIMESTAMP(6), gmail_message_id=CONCAT('18c', HEX(id)) "
                    "WHERE job_id=%s AND id %% 3 = 1", (job_id,))
    return job_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(url: str, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, DATABASE_URL=url, PORT=str(port), HOST="127.0.0.1",
               LOG_LEVEL="WARNING", EMBEDDED_RUNNER="0")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mailjobs"), "serve"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not answer /healthz within 60 s")


def export_once(base: str, key: str, job_id: int) -> tuple[int, int, float]:
    """(data lines, bytes, seconds) of one streamed export."""
    started = time.perf_counter()
    lines = size = 0
    with requests.get(f"{base}/api/jobs/{job_id}/recipients.csv", headers={"X-API-Key": key},
                      stream=True, timeout=300) as r:
        r.raise_for_status()
        for chunk in r.iter_content(64 * 1024):
            lines += chunk.count(b"\n")   # a "\r\n" may straddle two chunks
            size += len(chunk)
    return lines - 1, size, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with private_mariadb("mailjobs_bench") as url, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=url)
        apply_migrations(settings.db)
        dao = Dao(settings)
        key = api_keys.create_key(dao, "bench", ["*"], False)
        jobs = {n: store_job(dao, key.id, n) for n in sizes}
        port = free_port()
        proc = start_server(url, port, Path(tmp) / "serve.log")
        base = f"http://127.0.0.1:{port}"
        sampler = RssSampler(proc.pid)
        sampler.start()
        try:
            export_once(base, key.key, jobs[sizes[0]])      # warm-up, not measured
            print("| recipients | MB | rows/s (median) | server RSS before (MB) | peak (MB) "
                  "| growth (MB) |")
            print("|---:|---:|---:|---:|---:|---:|")
            for n in sizes:
                before = sampler.reset()
                runs = [export_once(base, key.key, jobs[n]) for _ in range(args.repeats)]
                time.sleep(0.1)
                assert all(lines == n for lines, _, _ in runs), runs
                rate = statistics.median(n / s for _, _, s in runs)
                print(f"| {n:,} | {runs[0][1] / 1e6:.1f} | {rate:,.0f} | {before / 1024:.1f} "
                      f"| {sampler.peak / 1024:.1f} | {(sampler.peak - before) / 1024:+.1f} |")
        finally:
            sampler.stopped.set()
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            dao.close()


if __name__ == "__main__":
    main()
