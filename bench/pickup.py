"""Pickup latency: from the moment the API has committed a job to its first send, for an API
process with an embedded runner (woken by the commit) and for a runner that only polls (a
separate `mailjobs worker`, POLL_INTERVAL apart).

In one process, against a private MariaDB: a JobRunner thread with a transport that records
when its first message arrives, and the Flask app over the same database (test client, so HTTP
parsing is not in the figure). Each repeat posts a one-recipient job after the runner has gone
idle (at a random point of its wait); the time is from the POST's answer (the commit is done) to the transport's first call.

    .venv/bin/python bench/pickup.py [--repeats 30] [--poll 0.5]
"""
from __future__ import annotations

import argparse
import random
import threading
import time
from pathlib import Path

from benchlib import percentile, private_mariadb
from mailjobs import api_keys
from mailjobs.api_server import create_app
from mailjobs.dao_mysql import Dao
from mailjobs.db.migrations import apply_migrations
from mailjobs.job_runner import JobRunner
from mailjobs.settings import Settings
from mailjobs.transports.base import SendResult

ROOT = Path(__file__).resolve().parents[1]

FIRST_SEND = threading.Event()
SENT_AT: list[float] = []


class Recording:
    name = "recording"

    def send(self, msg):
        SENT_AT.append(time.perf_counter())
        FIRST_SEND.set()
        return SendResult(provider_id=f"rec-{msg.recipient_id}")

    def find_by_message_id(self, sender_email, message_id):
        return None

    def close(self):
        pass


def measure(settings: Settings, dao: Dao, wake: bool, repeats: int) -> list[float]:
    runner = JobRunner(settings, dao, Recording, kind="embedded" if wake else "worker")
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    app = create_app(settings, dao, runs_runner=True, on_enqueue=runner.wake if wake else None)
    client = app.test_client()
    key = api_keys.create_key(dao, "pickup", ["*"]).key
    body = {"sender_email": "ops@example.com", "template": {"subject": "Hi", "text": "Hello"},
            "recipients": [{"email": "a@example.com"}]}
    times = []
    try:
        for _ in range(repeats):
            while runner.state != "idle":
                time.sleep(0.01)
            time.sleep(random.uniform(0.02, settings.poll_interval))   # anywhere in its wait
            FIRST_SEND.clear()
            r = client.post("/api/jobs/send_template_emails", json=body,
                            headers={"X-API-Key": key})
            committed = time.perf_counter()
            assert r.status_code == 202, r.json
            assert FIRST_SEND.wait(10 * settings.poll_interval + 5)
            times.append((SENT_AT[-1] - committed) * 1000)
    finally:
        runner.stop()
        thread.join(30)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--poll", type=float, default=0.5)
    args = ap.parse_args()
    with private_mariadb("pickup") as url:
        settings = Settings(database_url=url).with_overrides(
            poll_interval=args.poll, sender_rate_per_minute=0, sender_daily_cap=0,
            embedded_runner=False, bounce_check_interval=0)
        apply_migrations(settings.db)
        dao = Dao(settings)
        rows = [("embedded runner, woken by the commit", measure(settings, dao, True,
                                                                 args.repeats)),
                (f"polling runner (POLL_INTERVAL {args.poll} s)",
                 measure(settings, dao, False, args.repeats))]
    print("| runner | commit → first send, p50 ms | p95 ms | max ms | repeats |")
    print("|---|---:|---:|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {percentile(t, 0.5):.1f} | {percentile(t, 0.95):.1f} | "
              f"{max(t):.1f} | {len(t)} |")


if __name__ == "__main__":
    main()
