"""The far side's limits (issue 20): what learning a server's connection limit costs.

A real SMTP server (aiosmtpd on 127.0.0.1) that allows 2 connections per client and answers the
third with `421 4.7.0 too many connections`; one JobRunner (RUNNER_CONCURRENCY 8) against a
private MariaDB sends 1,000 mails through it, with SMTP_MAX_CONNECTIONS set right (2) and wrong
(8, so the cap must be learned). Each repeat starts from an empty database (no cap learned yet);
the configurations alternate, so both see the same machine. Reported: time from the commit to
the job's end, the server's refusals (each a retry), attempts per recipient, the learned cap.

    .venv/bin/python bench/far_limits.py [--mails 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from benchlib import private_mariadb
from mailjobs import api_keys
from mailjobs.api_server import create_app
from mailjobs.dao_mysql import Dao
from mailjobs.db.migrations import apply_migrations
from mailjobs.job_runner import JobRunner
from mailjobs.settings import Settings
from mailjobs.transports import factory as transports

ROOT = Path(__file__).resolve().parents[1]

LIMIT = 2


class Server:
    """Counts open sessions (closed at QUIT or at connection loss), refuses beyond LIMIT."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: set = set()
        self.refused = 0
        self.received = 0
        self.max_open = 0

    async def handle_QUIT(self, server, session, envelope):
        with self.lock:
            self.open.discard(server)
        return "221 Bye"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received += 1
        return "250 2.0.0 Ok: queued"


class Counting(SMTP):
    def connection_lost(self, error):
        with self.event_handler.lock:
            self.event_handler.open.discard(self)
        super().connection_lost(error)


class Refuser(asyncio.Protocol):
    def connection_made(self, transport):
        transport.write(b"421 4.7.0 bench: too many connections from 127.0.0.1\r\n")
        transport.close()


class Limited(Controller):
    def factory(self):
        """Counted open when accepted: asyncio accepts a burst of connections (calling this
        for each) before any of their connection_made runs."""
        h = self.handler
        with h.lock:
            if len(h.open) >= LIMIT:
                h.refused += 1
                return Refuser()
            server = Counting(h, **self.SMTP_kwargs)
            h.open.add(server)
            h.max_open = max(h.max_open, len(h.open))
            return server

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def run_once(base: Settings, cap: int, mails: int) -> dict:
    handler = Server()
    controller = Limited(handler, hostname="127.0.0.1", port=0)
    controller.start()
    while handler.open:
        time.sleep(0.01)
    handler.max_open = 0
    database = f"far{cap}_{int(time.time() * 1000)}"
    settings = base.with_overrides(database_url=base.database_url.replace("/far?", f"/{database}?"),
                                   smtp_port=controller.port, smtp_max_connections=cap)
    apply_migrations(settings.db)
    dao = Dao(settings)
    try:
        key = api_keys.create_key(dao, "far", ["*"]).key
        client = create_app(settings, dao).test_client()
        body = {"sender_email": "ops@example.com", "template": {"subject": "Hi {{ n }}",
                                                                 "text": "Hello {{ n }}"},
                "recipients": [{"email": f"u{i}@example.com", "variables": {"n": i}}
                               for i in range(mails)]}
        r = client.post("/api/jobs/send_template_emails", json=body, headers={"X-API-Key": key})
        assert r.status_code == 202, r.json
        job_id = r.json["job_id"]
        runner = JobRunner(settings, dao, transports.transport_factory(settings, dao))
        thread = threading.Thread(target=runner.run, daemon=True)
        started = time.perf_counter()
        thread.start()
        while dao.job(job_id).status not in ("completed", "completed_with_errors", "failed"):
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        runner.stop()
        thread.join(60)
        rows = dao.recipients_page(job_id, None, 0, mails + 1)
        caps = dao.learned_caps()
        return {"seconds": elapsed, "refused": handler.refused, "received": handler.received,
                "max_open": handler.max_open,
                "statuses": Counter(r.status for r in rows),
                "attempts": Counter(r.attempts for r in rows),
                "learned": caps[0].cap if caps else None}
    finally:
        dao.close()
        controller.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mails", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with private_mariadb("far") as url:
        base = Settings(database_url=url).with_overrides(
            mail_transport="smtp", smtp_host="127.0.0.1", smtp_security="none",
            smtp_timeout=10.0, runner_concurrency=8, claim_batch=100,
            sender_rate_per_minute=0, sender_daily_cap=0, embedded_runner=False,
            bounce_check_interval=0, purge_interval=0, poll_interval=0.1,
            record_flush_interval=0.1)
        results: dict[int, list[dict]] = {LIMIT: [], 8: []}
        for i in range(args.repeats):
            for cap in ((LIMIT, 8) if i % 2 == 0 else (8, LIMIT)):
                out = run_once(base, cap, args.mails)
                results[cap].append(out)
                print(f"repeat {i + 1} cap {cap}: {out['seconds']:.2f} s, refused "
                      f"{out['refused']}, received {out['received']}, max open "
                      f"{out['max_open']}, attempts {dict(out['attempts'])}, statuses "
                      f"{dict(out['statuses'])}, learned {out['learned']}", flush=True)
    right = statistics.median(r["seconds"] for r in results[LIMIT])
    wrong = statistics.median(r["seconds"] for r in results[8])
    print()
    print(f"| SMTP_MAX_CONNECTIONS (server allows {LIMIT}) | time, median s | refusals "
          f"(retries), median | delivered | attempts per recipient | learned cap |")
    print("|---|---:|---:|---:|---|---:|")
    for cap, label in ((LIMIT, f"{LIMIT} (right)"), (8, "8 (wrong: learned)")):
        rs = results[cap]
        print(f"| {label} | {statistics.median(r['seconds'] for r in rs):.2f} | "
              f"{statistics.median(r['refused'] for r in rs):g} | "
              f"{min(r['received'] for r in rs)}–{max(r['received'] for r in rs)} | "
              f"{' '.join(sorted({str(dict(r['attempts'])) for r in rs}))} | "
              f"{' '.join(sorted({str(r['learned']) for r in rs}))} |")
    print(f"\nwrong / right time: {wrong / right:.2f} (target ≤ 1.2); per repeat: "
          + ", ".join(f"{w['seconds'] / r['seconds']:.2f}"
                      for w, r in zip(results[8], results[LIMIT], strict=True)))


if __name__ == "__main__":
    main()
