"""Benchmark of webhooks (issue 15). Not a test: it prints a markdown table.

On a private MariaDB in a temporary directory, one in-process JobRunner (null transport, no
sender rate limit, LOG_LEVEL=WARNING) sends a job of N recipients (default 10,000) three ways:

- off: the key has no webhook endpoint (the outbox INSERT ... SELECT still runs, finds none);
- batch 1: one endpoint taking every event type, one event per POST;
- batch 100: the same endpoint with batch_size 100 (bodies are JSON arrays).

The receiver is a ThreadingHTTPServer in a subprocess on 127.0.0.1 answering 200 at once (so
its parsing does not share the runner's GIL). Measured per run, all from the database's clock:

- send rate: N / (runner start -> job completed), the runner's own throughput;
- events delivered per second: events / (first event written -> last delivery recorded);
- lag: last recipient sent -> last delivery recorded (how long a client waits for the tail).

Every configuration runs `--repeats` times, interleaved (off, 1, 100, off, 1, 100, ...), each on
a fresh schema; the slowdown is the median of the per-round ratios batch-100 / off.

    .venv/bin/python bench/webhooks.py [--recipients 10000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchlib import private_mariadb

ROOT = Path(__file__).resolve().parents[1]

SENDER = "bench@example.com"
BENCH_DB = "mailjobs_bench_webhooks"
SLOWDOWN_TARGET = 1.10     # send rate with webhooks at batch 100 at most 10 % lower


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def serve_receiver() -> None:
    """Child mode: answer every POST 200 until stdin closes; print the port."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    Handler.disable_nagle_algorithm = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    sys.stdin.read()
    server.shutdown()


class ReceiverProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()),
                                      "--serve-receiver"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd=ROOT)
        port = json.loads(self.proc.stdout.readline())["port"]
        self.url = f"http://127.0.0.1:{port}/hook"

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fresh(dao) -> None:
    with dao.transaction() as cur:
        cur.execute("SET FOREIGN_KEY_CHECKS = 0")
        for table in ("job_recipients", "jobs", "webhook_events", "webhook_deliveries",
                      "webhook_endpoints", "runners", "senders", "sender_hourly_sends"):
            cur.execute(f"TRUNCATE TABLE {table}")
        cur.execute("SET FOREIGN_KEY_CHECKS = 1")


def one_run(settings, dao, key_id: int, n: int, batch: int | None, url: str) -> dict:
    from mailjobs.job_runner import JobRunner
    from mailjobs.records import NewJob, NewRecipient
    from mailjobs.transports import factory as transports
    from mailjobs.webhooks.dispatch import Signer
    from mailjobs.webhooks.post import EVENT_TYPES, new_secret

    fresh(dao)
    if batch is not None:
        dao.create_webhook(key_id, url, "bench", list(EVENT_TYPES), batch,
                           Signer(settings).encrypt(new_secret()))
    rows = [NewRecipient(f"user{i:06d}@example.com", f"User {i}", {"i": i}) for i in range(n)]
    job = NewJob(api_key_id=key_id, sender_email=SENDER, from_name="Bench", reply_to=None,
                 subject_template="Hi {{ name }}", html_template=None,
                 text_template="Hello {{ name }}", variables={}, total=n,
                 duplicates_removed=0, idempotency_key=None, request_hash=None)
    job_id = dao.create_job(job, rows)
    runner = JobRunner(settings, dao, transports.transport_factory(settings, dao))
    thread = threading.Thread(target=runner.run, daemon=True)
    t0 = dao.db_now()
    cpu0 = time.process_time()
    thread.start()
    try:
        while dao.job_statuses([job_id])[job_id] != "completed":
            time.sleep(0.02)
        cpu = time.process_time() - cpu0
        done = dao.job(job_id).finished_at
        expected = n + 1 if batch is not None else 0
        while batch is not None and delivered_events(dao) < expected:
            time.sleep(0.05)
    finally:
        runner.stop()
        thread.join(60)
    out = {"send_rate": n / (done - t0).total_seconds(), "cpu": cpu}
    if batch is not None:
        with dao.transaction() as cur:
            cur.execute("SELECT MIN(created_at) FROM webhook_events")
            first = cur.fetchone()[0]
            cur.execute("SELECT MAX(delivered_at), COUNT(*) FROM webhook_deliveries")
            last, posts = cur.fetchone()
            cur.execute("SELECT MAX(sent_at) FROM job_recipients")
            last_sent = cur.fetchone()[0]
        out.update(events_per_s=expected / (last - first).total_seconds(),
                   lag=(last - last_sent).total_seconds(), posts=int(posts))
    return out


def delivered_events(dao) -> int:
    with dao.transaction() as cur:
        cur.execute("SELECT COALESCE(SUM(events), 0) FROM webhook_deliveries "
                    "WHERE status = 'delivered'")
        return int(cur.fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="off,1,100",
                        help="which runs, comma-separated (e.g. off,100 to skip batch 1)")
    parser.add_argument("--serve-receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_receiver:
        serve_receiver()
        return 0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from cryptography.fernet import Fernet

    from mailjobs import api_keys
    from mailjobs.dao_mysql import Dao
    from mailjobs.db.migrations import apply_migrations
    from mailjobs.settings import Settings

    receiver = ReceiverProcess()
    try:
        with private_mariadb(BENCH_DB) as url:
            settings = Settings(database_url=url).with_overrides(
                mail_transport="null", sender_rate_per_minute=0, sender_daily_cap=0,
                embedded_runner=False, bounce_check_interval=0, purge_interval=0,
                webhook_allow_private=True, webhook_allow_http=True,
                token_encryption_key=Fernet.generate_key().decode())
            apply_migrations(settings.db)
            dao = Dao(settings)
            key_id = api_keys.create_key(dao, "bench", ["*"]).id
            configs = args.configs.split(",")
            results: dict[str, list[dict]] = {name: [] for name in configs}
            for round_ in range(args.repeats):
                for name, batch in (("off", None), ("1", 1), ("100", 100)):
                    if name not in configs:
                        continue
                    say(f"round {round_ + 1}: webhooks {name}, {args.recipients:,} recipients")
                    r = one_run(settings, dao, key_id, args.recipients, batch, receiver.url)
                    say(f"  {r}")
                    results[name].append(r)
            dao.close()
    finally:
        receiver.stop()
    report(results, args)
    return 0


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    med = statistics.median
    print(f"\n{args.recipients:,} recipients, null transport, 1 runner in-process, "
          f"{args.repeats} interleaved rounds (median; all runs in brackets)\n")
    print("| webhooks | send rate /s | runner process CPU while sending, s | events delivered /s "
          "| last send → last event delivered | POSTs |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, label in (("off", "off (no endpoint)"), ("1", "batch 1"), ("100", "batch 100")):
        rs = results.get(name)
        if not rs:
            continue
        rate = med(r["send_rate"] for r in rs)
        runs = ", ".join(f"{r['send_rate']:,.0f}" for r in rs)
        cpus = ", ".join(f"{r['cpu']:.2f}" for r in rs)
        cpu = f"{med(r['cpu'] for r in rs):.2f} ({cpus})"
        if name == "off":
            print(f"| {label} | {rate:,.0f} ({runs}) | {cpu} | – | – | 0 |")
            continue
        eps = med(r["events_per_s"] for r in rs)
        lag = med(r["lag"] for r in rs)
        lags = ", ".join(f"{r['lag']:.2f}" for r in rs)
        print(f"| {label} | {rate:,.0f} ({runs}) | {cpu} | {eps:,.0f} | {lag:.2f} s ({lags}) | "
              f"{rs[0]['posts']:,} |")
    ratios = [off["send_rate"] / b["send_rate"] for off, b in zip(results["off"], results["100"],
                                                                 strict=True)]
    ratios1 = [off["send_rate"] / b["send_rate"] for off, b in zip(results["off"],
                                                                  results.get("1") or [],
                                                                  strict=False)] or [0.0]
    verdict = "met" if med(ratios) <= SLOWDOWN_TARGET else "**not met**"
    cpu100 = med(b["cpu"] / off["cpu"] for off, b in zip(results["off"], results["100"],
                                                        strict=True))
    print(f"\nSend time batch 100 / off: **{med(ratios):.2f}** (per round "
          f"{', '.join(f'{x:.2f}' for x in ratios)}); target ≤ {SLOWDOWN_TARGET}: {verdict}. "
          f"Batch 1 / off: {med(ratios1):.2f} ({', '.join(f'{x:.2f}' for x in ratios1)}). "
          f"Runner CPU while sending, batch 100 / off: {cpu100:.2f}.")


if __name__ == "__main__":
    sys.exit(main())
