"""Benchmark of attachments (issue 16). Not a test: it prints a markdown table.

On a private MariaDB started in a temporary directory:

1. upload throughput: a 20 MB `POST /api/attachments` through the real HTTP server (waitress,
   as `mailjobs serve`), best and median of `--uploads` runs (each with new bytes);
2. a job of N recipients (default 1,000), each with its own 2 MB file, plus a shared 5 MB file,
   sent by a JobRunner in a child process (so its peak RSS, VmHWM, is its own) through
   a) the outbox transport (the parent deletes each .eml once checked, so the disk does not fill)
   b) the real GmailTransport against tests/fake_gmail.py in another child process (a fake that
      counts and discards what it receives: 1,000 x 9.5 MB would not fit in its memory);
   recipients/s (the job's started_at to finished_at) and the runner's peak RSS, next to its
   RSS before the job (baseline).

    .venv/bin/python bench/attachments.py [--recipients 1000] [--own-mb 2] [--shared-mb 5]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import from_tests, private_mariadb

ROOT = Path(__file__).resolve().parents[1]
BENCH_DB = "mailjobs_bench_attachments"
SENDER = "ops@example.com"
MB = 1024 * 1024


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# --- child: a fake Gmail that discards what it receives ----------------------------------------
def serve_fake_gmail() -> None:
    fake_gmail = from_tests("fake_gmail")
    fake_gmail._Handler.disable_nagle_algorithm = True
    received = {"count": 0, "bytes": 0}

    def store(self, account: str, raw: bytes):
        with self._lock:
            received["count"] += 1
            received["bytes"] += len(raw)
            n = received["count"]
        return fake_gmail.Sent(account, f"{n:016x}", f"{n:016x}", b"", time.time())

    fake_gmail.FakeGmail._store = store
    fake_gmail.FakeGmail._log_send = lambda self, account, raw, status: None
    fake = fake_gmail.FakeGmail(max_json_body=6 * MB).start()
    fake.add_account(SENDER)
    print(json.dumps({"url": fake.url, "token_uri": fake.token_uri,
                      "info": fake.authorized_user_info(SENDER)}), flush=True)
    try:
        sys.stdin.read()
    finally:
        print(json.dumps(received), flush=True)
        fake.stop()


# --- child: one runner until the job is done ---------------------------------------------------
def run_runner(job_id: int) -> None:
    from mailjobs.dao_mysql import Dao
    from mailjobs.job_runner import JobRunner
    from mailjobs.settings import load_settings
    from mailjobs.transports import factory as transports

    settings = load_settings(dotenv=False)
    dao = Dao(settings)
    runner = JobRunner(settings, dao, transports.transport_factory(settings, dao))
    baseline = status_kb(os.getpid(), "VmRSS")
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        while dao.job_statuses([job_id])[job_id] not in ("completed", "completed_with_errors",
                                                         "failed"):
            time.sleep(0.1)
    finally:
        runner.stop()
        thread.join(60)
    job = dao.job(job_id, with_counts=True)
    assert job is not None
    print(json.dumps({"baseline_kb": baseline, "peak_kb": status_kb(os.getpid(), "VmHWM"),
                      "seconds": (job.finished_at - job.started_at).total_seconds(),
                      "counts": job.counts, "cache_hits": runner.files.cache.hits,
                      "cache_misses": runner.files.cache.misses}), flush=True)


def child(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, **env})


# --- the parent --------------------------------------------------------------------------------
def upload_rows(url: str, key: str, n: int) -> list[float]:
    import requests

    rates = []
    for _ in range(n):
        data = os.urandom(20 * 1000 * 1000)
        started = time.monotonic()
        r = requests.post(f"{url}/api/attachments?filename=big.bin", data=data,
                          headers={"X-API-Key": key, "Content-Type": "application/octet-stream"},
                          timeout=300)
        seconds = time.monotonic() - started
        assert r.status_code == 201, r.text
        rates.append(len(data) / MB / seconds)
    return rates


def make_job(settings, dao, key, recipients: int, own_mb: float, shared_mb: float) -> int:
    from mailjobs.api_keys import KeyVerifier
    from mailjobs.attachments.store import MySQLStore
    from mailjobs.enqueue import enqueue
    from mailjobs.web.schemas import SendTemplateEmailsIn

    store = MySQLStore(dao, settings.attachment_chunk_bytes)
    api_key = KeyVerifier(dao).verify(key)
    assert api_key is not None
    shared = store.upload(api_key.id, io.BytesIO(os.urandom(int(shared_mb * MB))),
                          "application/pdf", "guide.pdf", settings.attachment_max_bytes)[0]
    base = os.urandom(int(own_mb * MB))
    own = []
    for i in range(recipients):   # distinct bytes each (a prefix), stored once each
        data = i.to_bytes(4, "big") + base[4:]
        own.append(store.upload(api_key.id, io.BytesIO(data), "application/pdf", None,
                                settings.attachment_max_bytes)[0].public_id)
    req = SendTemplateEmailsIn.model_validate({
        "sender_email": SENDER, "template": {"subject": "Your ticket {{ code }}",
                                             "html": "<p>Hello {{ name }}</p>",
                                             "text": "Hello {{ name }}"},
        "attachments": [{"id": shared.public_id, "filename": "guide.pdf"}],
        "recipients": [{"email": f"user{i:05d}@example.com", "name": f"User {i}",
                        "variables": {"code": f"T-{i}"},
                        "attachments": [{"id": own[i], "filename": "ticket-{{ code }}.pdf"}]}
                       for i in range(recipients)]}, context={"max_recipients": 10**6})
    return enqueue(dao, api_key, req, "bench", None, settings=settings).job.id


def reset_job(dao, job_id: int) -> None:
    with dao.transaction() as cur:
        cur.execute("UPDATE job_recipients SET status = 'queued', attempts = 0, message_id = NULL,"
                    " next_attempt_at = UTC_TIMESTAMP(6), claimed_by = NULL, sent_at = NULL, "
                    "gmail_message_id = NULL WHERE job_id = %s", (job_id,))
        cur.execute("UPDATE jobs SET status = 'queued', started_at = NULL, finished_at = NULL "
                    "WHERE id = %s", (job_id,))


def send_row(env: dict[str, str], job_id: int, outbox: Path | None) -> dict:
    proc = child(["--run-runner", str(job_id)], env)
    stop = threading.Event()
    checked = {"files": 0, "largest": 0}

    def sweep() -> None:   # the outbox's messages are checked for size and deleted
        while not stop.wait(0.5):
            for path in outbox.glob("*/*.eml") if outbox else ():
                checked["largest"] = max(checked["largest"], path.stat().st_size)
                checked["files"] += 1
                path.unlink()

    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    try:
        out = json.loads(proc.stdout.readline())
        proc.wait(60)
    finally:
        stop.set()
        sweeper.join()
        if proc.poll() is None:
            proc.kill()
    if outbox:
        for path in outbox.glob("*/*.eml"):
            checked["largest"] = max(checked["largest"], path.stat().st_size)
            checked["files"] += 1
            path.unlink()
    out.update(checked)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--own-mb", type=float, default=2.0)
    parser.add_argument("--shared-mb", type=float, default=5.0)
    parser.add_argument("--uploads", type=int, default=5)
    parser.add_argument("--serve-fake-gmail", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-runner", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_fake_gmail:
        serve_fake_gmail()
        return 0
    if args.run_runner:
        run_runner(args.run_runner)
        return 0

    from cryptography.fernet import Fernet

    from mailjobs import api_keys
    from mailjobs.api_server import create_app
    from mailjobs.dao_mysql import Dao
    from mailjobs.db.migrations import apply_migrations
    from mailjobs.settings import Settings
    from mailjobs.transports.credentials import CredentialStore

    served = from_tests("served")
    rows: list[tuple[str, str]] = []
    with private_mariadb(BENCH_DB) as url, tempfile.TemporaryDirectory() as tmp:
        fernet = Fernet.generate_key().decode()
        settings = Settings(database_url=url).with_overrides(
            sender_rate_per_minute=0, sender_daily_cap=0, embedded_runner=False,
            token_encryption_key=fernet, log_level="WARNING")
        apply_migrations(settings.db)
        dao = Dao(settings)
        key = api_keys.create_key(dao, "bench", ["*"]).key
        say(f"max_allowed_packet {dao.max_packet_bytes()}")

        with served.served(create_app(settings, dao)) as base:
            rates = upload_rows(base, key, args.uploads)
        rows.append(("1. upload 20 MB (POST /api/attachments, waitress, MySQL chunks)",
                     f"median **{statistics.median(rates):.1f} MB/s**, best {max(rates):.1f} "
                     f"MB/s ({args.uploads} runs)"))
        say(rows[-1][1])

        started = time.monotonic()
        job_id = make_job(settings, dao, key, args.recipients, args.own_mb, args.shared_mb)
        say(f"job {job_id}: {args.recipients} recipients' files stored in "
            f"{time.monotonic() - started:.1f} s")
        env = {"DATABASE_URL": url, "SENDER_RATE_PER_MINUTE": "0", "SENDER_DAILY_CAP": "0",
               "EMBEDDED_RUNNER": "0", "POLL_INTERVAL": "0.1", "LOG_LEVEL": "WARNING",
               "PURGE_INTERVAL": "0", "BOUNCE_CHECK_INTERVAL": "0",
               "TOKEN_ENCRYPTION_KEY": fernet}
        outbox = Path(tmp) / "outbox"
        out = send_row({**env, "MAIL_TRANSPORT": "outbox", "OUTBOX_DIR": str(outbox)}, job_id,
                       outbox)
        say(f"outbox: {out}")
        what = (f"{args.recipients} x (own {args.own_mb:g} MB + shared {args.shared_mb:g} MB)")
        rows.append((f"2a. {what}, outbox",
                     f"**{args.recipients / out['seconds']:.1f} recipients/s** "
                     f"({out['seconds']:.1f} s); runner RSS peak **{out['peak_kb'] / 1024:.0f} "
                     f"MB** (before the job {out['baseline_kb'] / 1024:.0f} MB); messages "
                     f"{out['largest'] / MB:.1f} MB; {out['counts']}; shared-file cache "
                     f"{out['cache_hits']} hits / {out['cache_misses']} misses"))

        fake = child(["--serve-fake-gmail"], {})
        hello = json.loads(fake.stdout.readline())
        try:
            gmail_settings = settings.with_overrides(mail_transport="gmail",
                                                     gmail_api_endpoint=hello["url"],
                                                     gmail_token_uri=hello["token_uri"])
            CredentialStore(gmail_settings, dao).store_info(SENDER, hello["info"], resume=True)
            reset_job(dao, job_id)
            out = send_row({**env, "MAIL_TRANSPORT": "gmail", "GMAIL_API_ENDPOINT": hello["url"],
                            "GMAIL_TOKEN_URI": hello["token_uri"]}, job_id, None)
        finally:
            fake.stdin.close()
            received = json.loads(fake.stdout.readline() or "{}")
            fake.wait(10)
        say(f"gmail: {out} fake received {received}")
        rows.append((f"2b. {what}, fake Gmail (resumable upload)",
                     f"**{args.recipients / out['seconds']:.1f} recipients/s** "
                     f"({out['seconds']:.1f} s); runner RSS peak **{out['peak_kb'] / 1024:.0f} "
                     f"MB** (before the job {out['baseline_kb'] / 1024:.0f} MB); the fake "
                     f"received {received.get('count')} messages, "
                     f"{received.get('bytes', 0) / received.get('count', 1) / MB:.1f} MB each; "
                     f"{out['counts']}"))
        dao.close()
    print("| row | measured |\n|---|---|")
    for what, result in rows:
        print(f"| {what} | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
