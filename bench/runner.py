"""Benchmark of the JobRunner (issue 4). Not a test: it prints a markdown table.

In one run, on a private MariaDB started in a temporary directory:

1. null transport: one in-process JobRunner sends a 10,000-recipient job (runner start -> job
   `completed`), with LOG_LEVEL=WARNING and again with the per-recipient INFO lines written to a
   file (the production default level), and once with a larger CLAIM_BATCH;
2. the real GmailTransport against tests/fake_gmail.py (run in a subprocess, so its parsing does
   not share this process's GIL) with no added latency;
3. the same with 50 ms per send and RUNNER_CONCURRENCY=8 (ideal 8 / 0.05 = 160/s); rows 2b/3b
   give the ceiling (bare GmailTransports against the same fake, no runner, no database), 3c
   the runner against a lean fake (no per-send parsing), 3d that with the Gmail Resource cached;
4. the floor: `Dao.claim` + `Dao.record_outcomes` in a loop, nothing sent;
5. enqueue -> first send latency over small jobs with an idle runner at POLL_INTERVAL=0.5;
6. RSS of a `mailjobs worker` subprocess (null transport) after a 1,000- and a 100,000-recipient
   job;
7. peer: the same number of messages as RQ jobs on Redis, one SimpleWorker in burst mode, each
   job only building the message with mail_message.build_message.

    cd /work/main && .venv/bin/pip install -r bench/requirements.txt   # rq, for row 7
    .venv/bin/python bench/runner.py [--quick] [--keep-tmp] [--skip-rq]

Everything it starts (MariaDB, fake Gmail, worker subprocess, redis-server if it had to start
one) is stopped, and its Redis keys and temporary directory are removed, also on error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import from_tests, percentile, rss_kb

ROOT = Path(__file__).resolve().parents[1]

SENDER_NULL = "bench-null@example.com"
SENDER_GMAIL = "bench-gmail@example.com"
SENDER_SLOW = "bench-slow@example.com"
BENCH_DB = "mailjobs_bench_runner"
FINAL = ("completed", "completed_with_errors", "failed", "cancelled")
PLANS = ("free", "pro", "team")
SUBJECT = "Hello {{ name }}, your {{ plan }} code"
HTML = "<p>Hi {{ name }},</p><p>your code is <b>{{ code }}</b> ({{ plan }}).</p>"
TEXT = "Hi {{ name }},\nyour code is {{ code }} ({{ plan }}).\n"

# Targets from the issue.
NULL_RATE_TARGET = 1000.0          # recipients/s, null transport, 2 cores
LATENCY_SHARE_TARGET = 0.90        # of concurrency / latency
PICKUP_TARGET_S = 1.0              # median enqueue -> first send
RSS_GROWTH_TARGET_MB = 20.0        # 1k -> 100k job, worker subprocess

FULL = {"null": 10_000, "gmail": 10_000, "slow": 2_400, "floor": 10_000, "pickup_jobs": 20,
        "rss_small": 1_000, "rss_big": 100_000, "rq": 10_000, "tuned_batch": 500}
QUICK = {"null": 2_000, "gmail": 1_000, "slow": 800, "floor": 2_000, "pickup_jobs": 8,
         "rss_small": 1_000, "rss_big": 10_000, "rq": 2_000, "tuned_batch": 500}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the fake Gmail in a subprocess ------------------------------------------------------------
def serve_fake_gmail(latency: float, sender: str, nagle: bool, lean: bool) -> None:
    """Child mode: run tests/fake_gmail.FakeGmail until stdin closes; print where it is.

    The fake's handler writes the response headers and body in two send() calls with Nagle on,
    so each answer waits ~40 ms for the client's delayed ACK (measured: 48.9 ms per sequential
    send as is, 5.0 ms with TCP_NODELAY). Real Gmail does not do that, so unless `nagle` the
    handler gets TCP_NODELAY here (socketserver's `disable_nagle_algorithm`).

    `lean`: the fake parses every message it accepts with the modern email policy (in `_store`,
    and again in `_log_send`), ~3 ms of CPU under its GIL per send, which caps the bare
    transport at ~75 % of 8 / 50 ms. A lean fake keeps the raw bytes only, so the runner, not
    the fake, is what row 3c measures."""
    fake_gmail = from_tests("fake_gmail")
    FakeGmail = fake_gmail.FakeGmail

    if not nagle:
        fake_gmail._Handler.disable_nagle_algorithm = True
    if lean:
        def store_raw(self, account: str, raw: bytes):
            gmail_id = secrets.token_hex(8)
            record = fake_gmail.Sent(account, gmail_id, gmail_id, raw, time.time())
            with self._lock:
                self.sent.append(record)
            return record
        fake_gmail.FakeGmail._store = store_raw
        fake_gmail.FakeGmail._log_send = lambda self, account, raw, status: None
    fake = FakeGmail().start()
    fake.add_account(sender)
    if latency > 0:   # the fake's latency knob (older fakes: a hang_next rule that never ends)
        if hasattr(fake, "send_latency"):
            fake.send_latency = latency
        else:
            fake.hang_next(latency, count=10**12)
    print(json.dumps({"url": fake.url, "token_uri": fake.token_uri,
                      "info": fake.authorized_user_info(sender)}), flush=True)
    try:
        sys.stdin.read()
    finally:
        fake.stop()


class FakeGmailProcess:
    def __init__(self, latency: float, sender: str, log_path: Path, nagle: bool = False,
                 lean: bool = False) -> None:
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-fake-gmail", str(latency),
             sender] + (["--fake-nagle"] if nagle else []) + (["--lean-fake"] if lean else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            cwd=ROOT, start_new_session=True)
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError(f"fake Gmail did not start; see {log_path}")
        hello = json.loads(line)
        self.url, self.token_uri, self.info = hello["url"], hello["token_uri"], hello["info"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --- helpers -----------------------------------------------------------------------------------


@dataclass
class Row:
    n: str
    what: str
    setup: str
    result: str
    target: str = "—"
    verdict: str = "—"


@dataclass
class Ctx:
    args: argparse.Namespace
    sizes: dict
    tmp: Path
    settings: object = None
    dao: object = None
    key_id: int = 0
    server: object = None
    rows: list[Row] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    null_rate: float = 0.0


def make_job(ctx: Ctx, n: int, sender: str, tag: str) -> int:
    from mailjobs.records import NewJob, NewRecipient

    rows = [NewRecipient(f"user{i:06d}.{tag}@example.com", f"User {i:06d}",
                         {"code": f"C{i:06d}", "plan": PLANS[i % 3]}) for i in range(n)]
    job = NewJob(api_key_id=ctx.key_id, sender_email=sender, from_name="Bench", reply_to=None,
                 subject_template=SUBJECT, html_template=HTML, text_template=TEXT,
                 variables={}, total=n, duplicates_removed=0, idempotency_key=None,
                 request_hash=None)
    return ctx.dao.create_job(job, rows)


def job_status(dao, job_id: int) -> str:
    return dao.job_statuses([job_id])[job_id]


def wait_final(dao, job_id: int, timeout: float, every: float = 0.02,
               stall: float = 30.0) -> tuple[str, float]:
    """Poll the job's status until it is final; give up after `timeout`, or after `stall`
    seconds without a new recorded outcome (a runner stuck in its error backoff)."""
    start = time.perf_counter()
    deadline = start + timeout
    last_counts, last_change, next_check = None, start, start + 2.0
    while True:
        status = job_status(dao, job_id)
        now = time.perf_counter()
        if status in FINAL:
            return status, now
        if now >= next_check:
            counts = dao.recipient_counts(job_id)
            if counts != last_counts:
                last_counts, last_change = counts, now
            elif now - last_change > stall:
                raise RuntimeError(f"job {job_id}: no progress for {stall:.0f} s (status "
                                   f"{status}, counts {counts}); see the runner's log above")
            next_check = now + 2.0
        if now > deadline:
            raise RuntimeError(f"job {job_id} not finished within {timeout:.0f} s "
                               f"(status {status}, counts {dao.recipient_counts(job_id)})")
        time.sleep(every)


def claim_to_finish(dao, job_id: int) -> float:
    job = dao.job(job_id)
    return (job.finished_at - job.started_at).total_seconds()


def check_all_sent(dao, job_id: int, n: int) -> None:
    counts = dao.recipient_counts(job_id)
    if counts != {"sent": n}:
        raise RuntimeError(f"job {job_id}: expected {n} sent, got {counts}")


class ThreadRunner:
    """One JobRunner in a thread of this process, with its own Dao (pool)."""

    def __init__(self, settings, factory=None) -> None:
        from mailjobs.dao_mysql import Dao
        from mailjobs.job_runner import JobRunner
        from mailjobs.transports import factory as transports

        self.dao = Dao(settings)
        factory = factory or transports.transport_factory(settings, self.dao)
        self.runner = JobRunner(settings, self.dao, factory, kind="worker")
        self.thread = threading.Thread(target=self.runner.run, name="bench-runner", daemon=True)

    def start(self) -> ThreadRunner:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.runner.stop()
        if self.thread.is_alive():
            self.thread.join(60)
        self.dao.close()


# --- rows 1-3: a job through one in-process runner --------------------------------------------
def timed_job(ctx: Ctx, settings, n: int, sender: str, tag: str, factory=None,
              timeout: float = 300.0) -> tuple[float, float]:
    """Enqueue n, start a runner, time runner start -> job completed. Returns (e2e/s, claim->
    finish/s)."""
    job_id = make_job(ctx, n, sender, tag)
    runner = ThreadRunner(settings, factory)
    ctx.cleanups.append(runner.stop)
    try:
        t0 = time.perf_counter()
        runner.start()
        status, t1 = wait_final(ctx.dao, job_id, timeout)
    finally:
        runner.stop()
        ctx.cleanups.remove(runner.stop)
    if status != "completed":
        raise RuntimeError(f"job {job_id} ended {status}: {ctx.dao.recipient_counts(job_id)}")
    check_all_sent(ctx.dao, job_id, n)
    return n / (t1 - t0), n / claim_to_finish(ctx.dao, job_id)


def row_null(ctx: Ctx) -> None:
    n = ctx.sizes["null"]
    base = ctx.settings.with_overrides(mail_transport="null")
    s = base
    say(f"1  null transport, {n:,} recipients, claim_batch {s.claim_batch}, concurrency "
        f"{s.runner_concurrency}, LOG_LEVEL=WARNING")
    e2e, span = timed_job(ctx, s, n, SENDER_NULL, "null")
    ctx.null_rate = e2e
    ctx.rows.append(Row("1", f"null transport, {n:,} recipients",
                        f"1 runner in-process, CLAIM_BATCH={s.claim_batch}, RUNNER_CONCURRENCY="
                        f"{s.runner_concurrency}, LOG_LEVEL=WARNING",
                        f"**{e2e:,.0f}/s** (claim→finish {span:,.0f}/s)",
                        f"≥ {NULL_RATE_TARGET:,.0f}/s", "met" if e2e >= NULL_RATE_TARGET else
                        "**not met**"))

    # the same with the runner's INFO lines (one per recipient) written to a file
    say(f"1b null transport, {n:,} recipients, LOG_LEVEL=INFO to a file")
    handler = logging.FileHandler(ctx.tmp / "runner-info.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    mj = logging.getLogger("mailjobs")
    mj.addHandler(handler)
    mj.setLevel(logging.INFO)
    mj.propagate = False
    try:
        e2e_info, span_info = timed_job(ctx, s, n, SENDER_NULL, "info")
    finally:
        mj.removeHandler(handler)
        mj.setLevel(logging.NOTSET)
        mj.propagate = True
        handler.close()
    ctx.rows.append(Row("1b", "same, LOG_LEVEL=INFO", "INFO lines to a file (1 per recipient)",
                        f"{e2e_info:,.0f}/s (claim→finish {span_info:,.0f}/s)",
                        f"≥ {NULL_RATE_TARGET:,.0f}/s",
                        "met" if e2e_info >= NULL_RATE_TARGET else "**not met**"))

    tb = ctx.sizes["tuned_batch"]
    s = base.with_overrides(claim_batch=tb, record_flush_rows=tb)
    say(f"1c null transport, {n:,} recipients, claim_batch {tb}, record_flush_rows {tb}")
    e2e_t, span_t = timed_job(ctx, s, n, SENDER_NULL, "tuned")
    ctx.rows.append(Row("1c", "same, tuned batch", f"CLAIM_BATCH={tb}, RECORD_FLUSH_ROWS={tb}, "
                        "LOG_LEVEL=WARNING", f"{e2e_t:,.0f}/s (claim→finish {span_t:,.0f}/s)",
                        f"≥ {NULL_RATE_TARGET:,.0f}/s",
                        "met" if e2e_t >= NULL_RATE_TARGET else "**not met**"))


def gmail_settings(ctx: Ctx, fake: FakeGmailProcess, sender: str, **overrides):
    from mailjobs.transports.credentials import CredentialStore

    s = ctx.settings.with_overrides(mail_transport="gmail", gmail_api_endpoint=fake.url,
                                    gmail_token_uri=fake.token_uri, **overrides)
    CredentialStore(s, ctx.dao).store_info(sender, fake.info, resume=True)
    return s


def transport_ceiling(fake: FakeGmailProcess, sender: str, threads: int, n: int) -> float:
    """sends/s of `threads` bare GmailTransports against the same fake: no runner, no database,
    one prebuilt message. What the client library + the fake allow: the runner's ceiling."""
    from mailjobs.mail_message import build_message
    from mailjobs.transports.base import OutgoingMessage
    from mailjobs.transports.gmail import GmailTransport, credentials_from_info

    class Provider:
        def get(self, sender_email):
            return credentials_from_info(fake.info, fake.token_uri)

        def save(self, sender_email, creds):
            pass

    per = max(1, n // threads)
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        transport = GmailTransport(Provider(), api_endpoint=fake.url)
        try:
            mid = f"<ceiling.{k}.{secrets.token_hex(4)}@example.com>"
            raw = build_message(sender_email=sender, from_name="Bench", reply_to=None,
                                to_email=f"ceiling{k}@example.com", to_name=f"User {k:06d}",
                                subject="Hello User, your pro code",
                                text="Hi User,\nyour code is C000001 (pro).\n",
                                html="<p>Hi User,</p><p>your code is <b>C000001</b> (pro).</p>",
                                message_id=mid)
            msg = OutgoingMessage(0, k, sender, f"ceiling{k}@example.com", mid, raw)
            transport.send(msg)   # warm: service built, connection open
            barrier.wait()
            for _ in range(per):
                transport.send(msg)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
            barrier.abort()
        finally:
            transport.close()

    pool = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    if errors:
        raise RuntimeError(f"transport ceiling: {errors[0]!r}")
    return per * threads / (time.perf_counter() - t0)


def fake_note(ctx: Ctx) -> str:
    return ", fake as is (Nagle on)" if ctx.args.fake_nagle else ", fake with TCP_NODELAY"


def row_gmail(ctx: Ctx) -> None:
    n = ctx.sizes["gmail"]
    fake = FakeGmailProcess(0.0, SENDER_GMAIL, ctx.tmp / "fake-gmail-0.log",
                            ctx.args.fake_nagle)
    ctx.cleanups.append(fake.stop)
    try:
        s = gmail_settings(ctx, fake, SENDER_GMAIL)
        say(f"2  fake Gmail, 0 ms, {n:,} recipients, concurrency {s.runner_concurrency}")
        e2e, span = timed_job(ctx, s, n, SENDER_GMAIL, "gmail")
        say(f"2b bare GmailTransport x{s.runner_concurrency} against the same fake")
        ceiling = transport_ceiling(fake, SENDER_GMAIL, s.runner_concurrency, min(n, 2000))
    finally:
        fake.stop()
        ctx.cleanups.remove(fake.stop)
    ctx.rows.append(Row("2", f"fake Gmail, 0 ms latency, {n:,} recipients",
                        f"real GmailTransport, RUNNER_CONCURRENCY={s.runner_concurrency}, "
                        f"fake in a subprocess{fake_note(ctx)}",
                        f"{e2e:,.0f}/s (claim→finish {span:,.0f}/s)", "—",
                        f"{e2e / ceiling:.0%} of row 2b"))
    ctx.rows.append(Row("2b", "ceiling: bare GmailTransport, same fake, 0 ms",
                        f"{s.runner_concurrency} threads, no runner, no DB, one prebuilt message",
                        f"{ceiling:,.0f}/s"))


def row_slow(ctx: Ctx) -> None:
    n = ctx.sizes["slow"]
    latency, conc = 0.05, 8
    ideal = conc / latency
    fake = FakeGmailProcess(latency, SENDER_SLOW, ctx.tmp / "fake-gmail-50.log",
                            ctx.args.fake_nagle)
    ctx.cleanups.append(fake.stop)
    try:
        s = gmail_settings(ctx, fake, SENDER_SLOW, runner_concurrency=conc)
        say(f"3  fake Gmail, 50 ms, {n:,} recipients, concurrency {conc}")
        e2e, span = timed_job(ctx, s, n, SENDER_SLOW, "slow")
        say(f"3b bare GmailTransport x{conc} against the same fake")
        ceiling = transport_ceiling(fake, SENDER_SLOW, conc, min(n, 1600))
    finally:
        fake.stop()
        ctx.cleanups.remove(fake.stop)
    share, share_span = e2e / ideal, span / ideal
    ctx.rows.append(Row("3", f"fake Gmail, 50 ms per send, {n:,} recipients",
                        f"RUNNER_CONCURRENCY={conc}, ideal {ideal:.0f}/s{fake_note(ctx)}",
                        f"**{e2e:,.1f}/s = {share:.0%}** of ideal (claim→finish {span:,.1f}/s = "
                        f"{share_span:.0%}); {e2e / ceiling:.0%} of row 3b",
                        f"≥ {LATENCY_SHARE_TARGET:.0%}",
                        "met" if share >= LATENCY_SHARE_TARGET else "**not met**"))
    ctx.rows.append(Row("3b", "ceiling: bare GmailTransport, same fake, 50 ms",
                        f"{conc} threads, no runner, no DB, one prebuilt message",
                        f"{ceiling:,.1f}/s = {ceiling / ideal:.0%} of ideal"))

    # the same against a lean fake (no per-send parsing), then with the Resource cached
    fake = FakeGmailProcess(latency, SENDER_SLOW, ctx.tmp / "fake-gmail-50-lean.log",
                            ctx.args.fake_nagle, lean=True)
    ctx.cleanups.append(fake.stop)
    try:
        s = gmail_settings(ctx, fake, SENDER_SLOW, runner_concurrency=conc)
        say(f"3c lean fake Gmail, 50 ms, {n:,} recipients, concurrency {conc}")
        lean, lean_span = timed_job(ctx, s, n, SENDER_SLOW, "lean")
        say("3d the same, GmailTransport's messages() Resource cached (bench monkeypatch)")
        with cached_gmail_resource():
            cached, cached_span = timed_job(ctx, s, n, SENDER_SLOW, "cached")
    finally:
        fake.stop()
        ctx.cleanups.remove(fake.stop)
    ctx.rows.append(Row("3c", f"as 3, lean fake (stores raw bytes only), {n:,}",
                        f"RUNNER_CONCURRENCY={conc}, ideal {ideal:.0f}/s",
                        f"**{lean:,.1f}/s = {lean / ideal:.0%}** of ideal (claim→finish "
                        f"{lean_span:,.1f}/s = {lean_span / ideal:.0%})",
                        f"≥ {LATENCY_SHARE_TARGET:.0%}",
                        "met" if lean / ideal >= LATENCY_SHARE_TARGET else "**not met**"))
    ctx.rows.append(Row("3d", "as 3c, `users().messages()` Resource cached per session",
                        "bench monkeypatch of src/transport_gmail.py (suggested fix)",
                        f"**{cached:,.1f}/s = {cached / ideal:.0%}** of ideal (claim→finish "
                        f"{cached_span:,.1f}/s = {cached_span / ideal:.0%})",
                        f"≥ {LATENCY_SHARE_TARGET:.0%}",
                        "met" if cached / ideal >= LATENCY_SHARE_TARGET else "**not met**"))


@contextmanager
def cached_gmail_resource():
    """GmailTransport with `service.users().messages()` built once per sender session instead
    of on every send (each call rebuilds 14 discovery methods: ~1 ms of CPU). Bench-only
    monkeypatch, undone on exit, to show what the suggested change to src would give."""
    from mailjobs.transports import gmail as transport_gmail

    original = transport_gmail.GmailTransport._session

    class Users:
        def __init__(self, service) -> None:
            self._messages = service.users().messages()

        def messages(self):
            return self._messages

    class Service:
        def __init__(self, service) -> None:
            self._users = Users(service)

        def users(self):
            return self._users

    def session(self, sender):
        found = original(self, sender)
        if not isinstance(found.service, Service):
            found.service = Service(found.service)
        return found

    transport_gmail.GmailTransport._session = session
    try:
        yield
    finally:
        transport_gmail.GmailTransport._session = original


# --- row 4: the floor --------------------------------------------------------------------------
def row_floor(ctx: Ctx) -> None:
    from mailjobs.rate_limit import Limits
    from mailjobs.records import SentOutcome

    n = ctx.sizes["floor"]
    limits = Limits(0, 0, ctx.settings.sender_burst_seconds)
    results = []
    for batch in (ctx.settings.claim_batch, 200):
        job_id = make_job(ctx, n, SENDER_NULL, f"floor{batch}")
        runner_id = f"bench-floor-{secrets.token_hex(3)}"
        say(f"4  floor: claim + record_outcomes, batch {batch}, {n:,} recipients")
        done = 0
        t0 = time.perf_counter()
        while True:
            rows, _ = ctx.dao.claim(job_id, SENDER_NULL, runner_id, batch,
                                    ctx.settings.lease_seconds, limits)
            if not rows:
                break
            ctx.dao.record_outcomes(runner_id, [SentOutcome(r.id, f"null-{r.id}") for r in rows], [],
                                   [])
            done += len(rows)
        elapsed = time.perf_counter() - t0
        ctx.dao.finish_job_if_done(job_id)
        check_all_sent(ctx.dao, job_id, n)
        results.append((batch, done / elapsed))
    text = ", ".join(f"batch {b}: **{r:,.0f}/s**" for b, r in results)
    ratio = ctx.null_rate / results[0][1] if ctx.null_rate else 0
    ctx.rows.append(Row("4", f"floor: `Dao.claim` + `Dao.record_outcomes`, {n:,}",
                        "same SQL in a loop, nothing sent or rendered", text,
                        "—", f"runner (row 1) = {ratio:.0%} of floor"))


# --- row 5: pickup latency ---------------------------------------------------------------------
class TimingTransport:
    """NullTransport that notes when the first message of each job reaches it."""
    name = "timing"
    first: dict[int, float] = {}
    events: dict[int, threading.Event] = {}
    lock = threading.Lock()

    def send(self, msg):
        from mailjobs.transports.base import SendResult

        now = time.perf_counter()
        with self.lock:
            if msg.job_id not in self.first:
                self.first[msg.job_id] = now
                self.events.setdefault(msg.job_id, threading.Event()).set()
        return SendResult(provider_id=f"null-{msg.recipient_id}")

    def find_by_message_id(self, sender, message_id):
        return None

    def close(self) -> None:
        pass


def row_pickup(ctx: Ctx) -> None:
    jobs = ctx.sizes["pickup_jobs"]
    s = ctx.settings.with_overrides(mail_transport="null")
    say(f"5  pickup: {jobs} jobs of 3 recipients, idle runner, POLL_INTERVAL={s.poll_interval}")
    runner = ThreadRunner(s, TimingTransport).start()
    ctx.cleanups.append(runner.stop)
    # The runner's poll clock restarts when it finishes a job, and the next job is enqueued a
    # chosen delay after this bench sees that: delays spread evenly over one poll interval (in
    # a shuffled order) sample the phase uniformly, so the median is not luck of the draw.
    offsets = [(i + 0.5) / jobs * s.poll_interval for i in range(jobs)]
    random.Random(4).shuffle(offsets)
    to_send, to_row = [], []
    try:
        time.sleep(1.5)   # let it go idle
        for i in range(jobs):
            time.sleep(offsets[i])
            job_id = make_job(ctx, 3, SENDER_NULL, f"pick{i}")
            t0 = time.perf_counter()  # create_job has committed
            with TimingTransport.lock:
                event = TimingTransport.events.setdefault(job_id, threading.Event())
            if not event.wait(10):
                raise RuntimeError(f"pickup: job {job_id} not sent within 10 s")
            to_send.append(TimingTransport.first[job_id] - t0)
            while not ctx.dao.recipient_counts(job_id).get("sent"):
                time.sleep(0.005)
            to_row.append(time.perf_counter() - t0)
            wait_final(ctx.dao, job_id, 10)
    finally:
        runner.stop()
        ctx.cleanups.remove(runner.stop)
    med = statistics.median(to_send)
    ctx.rows.append(Row("5", f"enqueue → first send, {jobs} jobs of 3",
                        f"idle runner, POLL_INTERVAL={s.poll_interval}, phases spread over one poll",
                        f"to transport: **median {med * 1000:,.0f} ms**, min "
                        f"{min(to_send) * 1000:,.0f}, p90 "
                        f"{percentile(to_send, .9) * 1000:,.0f}, max {max(to_send) * 1000:,.0f}; "
                        f"to `sent` row: median {statistics.median(to_row) * 1000:,.0f} ms, "
                        f"max {max(to_row) * 1000:,.0f}",
                        f"median < {PICKUP_TARGET_S * 1000:,.0f} ms",
                        "met" if med < PICKUP_TARGET_S else "**not met**"))


# --- row 6: worker subprocess RSS --------------------------------------------------------------
def row_rss(ctx: Ctx) -> None:
    small, big = ctx.sizes["rss_small"], ctx.sizes["rss_big"]
    env = dict(os.environ)
    env.update(DATABASE_URL=ctx.settings.database_url, MAIL_TRANSPORT="null",
               SENDER_RATE_PER_MINUTE="0", SENDER_DAILY_CAP="0", LOG_LEVEL="WARNING",
               PYTHONUNBUFFERED="1")
    log_path = ctx.tmp / "worker.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mailjobs"), "worker"], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()

    def stop_worker() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    ctx.cleanups.append(stop_worker)
    peak = [0]
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.wait(0.05):
            peak[0] = max(peak[0], rss_kb(proc.pid) or 0)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        exe = os.path.basename(os.readlink(f"/proc/{proc.pid}/exe"))
        if not exe.startswith("python"):
            raise RuntimeError(f"worker pid {proc.pid} is {exe}, not python")
        time.sleep(3)  # imports, migrations check, first idle poll
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log_path.read_text()[-2000:]}")
        idle = rss_kb(proc.pid)
        sampler.start()
        say(f"6  worker subprocess: {small:,}-recipient job")
        job_id = make_job(ctx, small, SENDER_NULL, "rss1")
        wait_final(ctx.dao, job_id, 120, every=0.1)
        check_all_sent(ctx.dao, job_id, small)
        time.sleep(2)
        after_small = rss_kb(proc.pid)
        say(f"6  worker subprocess: {big:,}-recipient job")
        job_id = make_job(ctx, big, SENDER_NULL, "rss2")
        t0 = time.perf_counter()
        _, t1 = wait_final(ctx.dao, job_id, 900, every=0.1)
        check_all_sent(ctx.dao, job_id, big)
        big_rate, big_span = big / (t1 - t0), big / claim_to_finish(ctx.dao, job_id)
        time.sleep(2)
        after_big = rss_kb(proc.pid)
    finally:
        stop_sampling.set()
        stop_worker()
        ctx.cleanups.remove(stop_worker)
    growth = (after_big - after_small) / 1024
    ctx.rows.append(Row("6", f"worker RSS, {small:,} then {big:,} recipients",
                        "`mailjobs worker` subprocess, null, LOG_LEVEL=WARNING",
                        f"idle {idle / 1024:.1f} MB → after {small:,}: {after_small / 1024:.1f} MB "
                        f"→ after {big:,}: {after_big / 1024:.1f} MB (peak {peak[0] / 1024:.1f}); "
                        f"**growth {growth:+.1f} MB**",
                        f"< {RSS_GROWTH_TARGET_MB:.0f} MB",
                        "met" if growth < RSS_GROWTH_TARGET_MB else "**not met**"))
    ctx.rows.append(Row("6b", f"null transport, {big:,} recipients, worker subprocess",
                        "same worker, defaults (CLAIM_BATCH=100, concurrency 4)",
                        f"{big_rate:,.0f}/s from commit (claim→finish {big_span:,.0f}/s)",
                        f"≥ {NULL_RATE_TARGET:,.0f}/s",
                        "met" if big_rate >= NULL_RATE_TARGET else "**not met**"))


# --- row 7: RQ peer ----------------------------------------------------------------------------
def rq_build_one(i: int, message_id: str) -> int:
    """An RQ job: build the same kind of message the runner builds, nothing else."""
    from mailjobs.mail_message import build_message

    name, code, plan = f"User {i:06d}", f"C{i:06d}", PLANS[i % 3]
    raw = build_message(sender_email=SENDER_NULL, from_name="Bench", reply_to=None,
                        to_email=f"user{i:06d}.rq@example.com", to_name=name,
                        subject=f"Hello {name}, your {plan} code",
                        text=f"Hi {name},\nyour code is {code} ({plan}).\n",
                        html=f"<p>Hi {name},</p><p>your code is <b>{code}</b> ({plan}).</p>",
                        message_id=message_id)
    return len(raw)


def redis_connection(ctx: Ctx):
    import redis

    conn = redis.Redis(host="127.0.0.1", port=6379)
    try:
        conn.ping()
        return conn
    except redis.exceptions.ConnectionError:
        pass
    if not shutil.which("redis-server"):
        raise RuntimeError("Redis is not running at 127.0.0.1:6379 and redis-server is missing "
                           "(apt-get install -y redis-server)")
    say("starting redis-server on 127.0.0.1:6379 (stopped again at the end)")
    subprocess.run(["redis-server", "--daemonize", "yes", "--port", "6379", "--bind",
                    "127.0.0.1", "--save", ""], check=True, stdout=subprocess.DEVNULL)

    def shutdown() -> None:
        try:
            redis.Redis(host="127.0.0.1", port=6379).shutdown(nosave=True)
        except redis.exceptions.ConnectionError:
            pass   # shutdown closes the connection under us
    ctx.cleanups.append(shutdown)
    for _ in range(50):
        try:
            conn.ping()
            return conn
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not answer")


def row_rq(ctx: Ctx) -> None:
    import rq
    from rq import Queue, SimpleWorker

    n = ctx.sizes["rq"]
    conn = redis_connection(ctx)
    tag = f"mjbench-{secrets.token_hex(4)}"

    def remove_keys() -> None:   # every key of this run has the tag in its name
        keys = list(conn.scan_iter(match=f"*{tag}*", count=1000))
        for start in range(0, len(keys), 1000):
            conn.delete(*keys[start:start + 1000])
        conn.srem("rq:queues", f"rq:queue:{tag}")
        conn.srem("rq:workers", f"rq:worker:{tag}-worker")

    ctx.cleanups.append(remove_keys)
    queue = Queue(tag, connection=conn)
    datas = [Queue.prepare_data(rq_build_one, args=(i, f"<rq.{i}.{tag}@example.com>"),
                                job_id=f"{tag}-{i}") for i in range(n)]
    say(f"7  RQ {rq.__version__}: enqueue_many {n:,} jobs")
    t0 = time.perf_counter()
    queue.enqueue_many(datas)
    enqueue_s = time.perf_counter() - t0
    say(f"7  RQ SimpleWorker burst over {n:,} jobs")
    worker = SimpleWorker([queue], connection=conn, name=f"{tag}-worker")
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.perf_counter()
    try:
        worker.work(burst=True, logging_level="WARNING")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    work_s = time.perf_counter() - t0
    finished = queue.finished_job_registry.count
    failed = queue.failed_job_registry.count
    if finished != n or failed:
        raise RuntimeError(f"RQ: {finished} finished, {failed} failed of {n}")
    rate = n / work_s
    verdict = (f"runner {ctx.null_rate / rate:.1f}× RQ" if ctx.null_rate else "—")
    ctx.rows.append(Row("7", f"peer: RQ {rq.__version__} + Redis, {n:,} jobs",
                        "1 SimpleWorker, burst, each job = build_message only",
                        f"enqueue_many {enqueue_s:.2f} s; worker **{rate:,.0f} jobs/s**",
                        "runner (row 1) ahead", verdict if ctx.null_rate > rate else
                        f"**not met** ({verdict})"))


# --- the run -----------------------------------------------------------------------------------
def setup(ctx: Ctx) -> None:
    from cryptography.fernet import Fernet

    from mailjobs import api_keys
    from mailjobs.dao_mysql import Dao
    from mailjobs.db.local_mariadb import LocalMariaDB
    from mailjobs.db.migrations import apply_migrations
    from mailjobs.settings import Settings

    ctx.server = LocalMariaDB(ctx.tmp / "mariadb")
    say(f"starting a private MariaDB in {ctx.server.root}")
    ctx.server.start()
    ctx.cleanups.append(ctx.server.stop)
    ctx.settings = Settings(database_url=ctx.server.url(BENCH_DB), sender_rate_per_minute=0,
                            sender_daily_cap=0, embedded_runner=False, mail_transport="null",
                            token_encryption_key=Fernet.generate_key().decode(),
                            log_level="WARNING")
    apply_migrations(ctx.settings.db)
    ctx.dao = Dao(ctx.settings)
    ctx.cleanups.append(ctx.dao.close)
    ctx.key_id = api_keys.create_key(ctx.dao, "bench-runner", ["*"]).id


def machine(ctx: Ctx) -> str:
    with ctx.dao.transaction() as cur:
        cur.execute("SELECT VERSION()")
        version = cur.fetchone()[0]
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores ({model}), MariaDB {version} (private, socket, "
            f"innodb_flush_log_at_trx_commit=2), Python {sys.version.split()[0]}")


def print_table(ctx: Ctx, header: str) -> None:
    print(f"\n{header}\n")
    print("| # | measurement | setup | result | target | verdict |")
    print("|---|---|---|---|---|---|")
    for r in ctx.rows:
        print(f"| {r.n} | {r.what} | {r.setup} | {r.result} | {r.target} | {r.verdict} |")
    for note in ctx.notes:
        print(f"\n{note}")
    sys.stdout.flush()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, for a fast check")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    ap.add_argument("--skip-rq", action="store_true", help="leave out the RQ row")
    ap.add_argument("--only", default="",
                    help="comma-separated rows to run, e.g. 1,4 (default: all of 1-7)")
    ap.add_argument("--fake-nagle", action="store_true",
                    help="run tests/fake_gmail.py as it is (Nagle on: ~40 ms per answer)")
    ap.add_argument("--lean-fake", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--serve-fake-gmail", nargs=2, metavar=("LATENCY", "SENDER"),
                    help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_fake_gmail:
        serve_fake_gmail(float(args.serve_fake_gmail[0]), args.serve_fake_gmail[1],
                         args.fake_nagle, args.lean_fake)
        return 0
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mailjobs.transport").setLevel(logging.ERROR)  # "null transport" warning

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    ctx = Ctx(args, QUICK if args.quick else FULL,
              Path(tempfile.mkdtemp(prefix="mailjobs-bench-runner-")))
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    steps = [("1", row_null), ("2", row_gmail), ("3", row_slow), ("4", row_floor),
             ("5", row_pickup), ("6", row_rss), ("7", row_rq)]
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    status = 0
    try:
        setup(ctx)
        header = f"Machine: {machine(ctx)}. Mode: {'quick' if args.quick else 'full'}."
        for name, step in steps:
            if (only and name not in only) or (name == "7" and args.skip_rq):
                continue
            step(ctx)
        header += (f" Whole run {time.perf_counter() - started:.0f} s; load average (1 min) "
                   f"{load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.")
        print_table(ctx, header)
    except BaseException as exc:
        status = 1
        if ctx.rows:
            print_table(ctx, "Partial results (the run failed):")
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        say(f"interrupted: {exc}")
    finally:
        for cleanup in reversed(ctx.cleanups):
            try:
                cleanup()
            except Exception as exc:  # go on cleaning the rest
                say(f"cleanup {getattr(cleanup, '__qualname__', cleanup)} failed: {exc}")
        if args.keep_tmp:
            say(f"kept {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
