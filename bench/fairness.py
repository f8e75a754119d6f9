"""Benchmark of fair scheduling (issue 8): a small job posted behind a big one. Not a test.

In one run, on a private MariaDB started in a temporary directory:

1. a 50,000-recipient job (sender big@example.com, API key "big") is stored with
   `Dao.create_job`, and one JobRunner runs in a thread of this process with a transport that
   sends nothing and only notes the time of each message it is handed, per job, after sleeping
   --latency seconds (default 5 ms: with no latency one runner sends ~2,200/s here, so 50,000
   recipients last ~23 s, too short for 17 windows of a few seconds; the runner still renders
   every message). Settings: SENDER_RATE_PER_MINUTE=0,
   SENDER_DAILY_CAP=0, everything else at its default (POLL_INTERVAL, CLAIM_BATCH,
   RUNNER_CONCURRENCY, RECORD_FLUSH_*), LOG_LEVEL=WARNING;
2. after a warm-up, windows of W seconds follow back to back: A (the big job alone), B (starts
   at the commit of a 10-recipient job posted with `Dao.create_job`, sender small@example.com,
   API key "small"), A, B, ... A. So every B window has an A window right before and right after
   it, and B is compared with the mean of those two (linear drift of the shared machine cancels).
   Per injection: enqueue (create_job committed) -> the small job's 10th message handed to the
   transport, enqueue -> its first message, and enqueue -> its `finished_at` in the database;
3. the same injections with the small job at priority "high" (the big one stays "normal"),
   interleaved with the normal ones (N H N H N H N N by default).

W is chosen from the big job's rate in the warm-up so that all windows fit in the big job's
remaining recipients (at most --window seconds); the run checks that the big job was still
sending at the end of the last window. The A windows are also compared with their neighbours
(A_i vs mean(A_i-1, A_i+1)): that spread is the noise floor of the ratio.

    cd /work/main && .venv/bin/python bench/fairness.py [--big 50000] [--injections 5]
        [--high 3] [--window 4] [--latency 0.005] [--keep-tmp]
    # the CPU-bound runner (no transport latency) needs a bigger job to fit the windows:
    .venv/bin/python bench/fairness.py --latency 0 --big 150000 --window 3

The runner is stopped (warm stop), the database server stopped and the temporary directory
removed at the end, also on error or SIGTERM.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parents[1]

BENCH_DB = "mailjobs_bench_fairness"
BIG_SENDER = "big@example.com"
SMALL_SENDER = "small@example.com"
SMALL_N = 10
PLANS = ("free", "pro", "team")
SUBJECT = "Hello {{ name }}, your {{ plan }} code"
HTML = "<p>Hi {{ name }},</p><p>your code is <b>{{ code }}</b> ({{ plan }}).</p>"
TEXT = "Hi {{ name }},\nyour code is {{ code }} ({{ plan }}).\n"

# Goals from the issue.
SMALL_DONE_GOAL_S = 2.0      # enqueue -> last send of the small job
SLOWDOWN_GOAL = 0.05         # the big job slowed by under 5 %

COMMAND = "cd /work/main && .venv/bin/python bench/fairness.py"


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Recorder:
    """A transport that sends nothing: notes time.monotonic() of each message, per job."""
    name = "recorder"
    times: ClassVar[dict[int, list[float]]] = {}
    lock = threading.Lock()

    latency = 0.0

    def send(self, msg):
        from mailjobs.transports.base import SendResult

        if Recorder.latency > 0:
            time.sleep(Recorder.latency)
        now = time.monotonic()
        with Recorder.lock:
            Recorder.times.setdefault(msg.job_id, []).append(now)
        return SendResult(provider_id=f"rec-{msg.recipient_id}")

    def find_by_message_id(self, sender, message_id):
        return None

    def close(self) -> None:
        pass

    @classmethod
    def of(cls, job_id: int) -> list[float]:
        with cls.lock:
            return list(cls.times.get(job_id, ()))


@dataclass
class Injection:
    kind: str                   # "normal" or "high"
    job_id: int = 0
    enqueued: float = 0.0       # monotonic, right after create_job returned (committed)
    enqueued_wall: float = 0.0  # time.time() at the same moment
    create_s: float = 0.0       # how long create_job took
    first_s: float | None = None
    last_s: float | None = None
    finished_s: float | None = None
    status: str = ""
    window: tuple[float, float] = (0.0, 0.0)


@dataclass
class Ctx:
    args: argparse.Namespace
    tmp: Path
    cleanups: list = field(default_factory=list)


def make_job(dao, key_id: int, n: int, sender: str, tag: str, priority: int = 1) -> int:
    from mailjobs.records import NewJob, NewRecipient

    rows = [NewRecipient(f"user{i:06d}.{tag}@example.com", f"User {i:06d}",
                         {"code": f"C{i:06d}", "plan": PLANS[i % 3]}) for i in range(n)]
    job = NewJob(api_key_id=key_id, sender_email=sender, from_name="Bench", reply_to=None,
                 subject_template=SUBJECT, html_template=HTML, text_template=TEXT,
                 variables={}, total=n, duplicates_removed=0, idempotency_key=None,
                 request_hash=None, priority=priority)
    return dao.create_job(job, rows)


def count_in(times: list[float], lo: float, hi: float) -> int:
    return sum(1 for t in times if lo <= t < hi)


def sleep_until(t: float) -> None:
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x * 1000:,.0f} ms" if x < 1 else f"{x:,.2f} s"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big", type=int, default=50_000, help="recipients of the big job")
    ap.add_argument("--injections", type=int, default=5, help="small jobs at normal priority")
    ap.add_argument("--high", type=int, default=3, help="small jobs at priority high")
    ap.add_argument("--window", type=float, default=4.0, help="longest window length, seconds")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before the first window")
    ap.add_argument("--latency", type=float, default=0.005,
                    help="seconds each send sleeps in the transport (default 0.005)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory")
    return ap.parse_args(argv)


def run(ctx: Ctx) -> int:
    from mailjobs import api_keys
    from mailjobs.dao_mysql import Dao
    from mailjobs.db.local_mariadb import LocalMariaDB
    from mailjobs.db.migrations import apply_migrations
    from mailjobs.job_runner import JobRunner
    from mailjobs.scheduling import PRIORITIES
    from mailjobs.settings import Settings

    args = ctx.args
    Recorder.latency = args.latency
    server = LocalMariaDB(ctx.tmp / "mariadb")
    say(f"starting a private MariaDB in {server.root}")
    server.start()
    ctx.cleanups.append(server.stop)
    server.create_database(BENCH_DB)
    settings = Settings(database_url=server.url(BENCH_DB), sender_rate_per_minute=0,
                        sender_daily_cap=0, embedded_runner=False, log_level="WARNING")
    apply_migrations(settings.db)
    dao = Dao(settings)                 # the "API" side: posts the jobs
    ctx.cleanups.append(dao.close)
    big_key = api_keys.create_key(dao, "big", ["*"]).id
    small_key = api_keys.create_key(dao, "small", ["*"]).id
    with dao.transaction() as cur:
        cur.execute("SELECT VERSION()")
        version = cur.fetchone()[0]

    say(f"storing the big job ({args.big:,} recipients)")
    t = time.perf_counter()
    big = make_job(dao, big_key, args.big, BIG_SENDER, "big")
    say(f"stored job {big} in {time.perf_counter() - t:.1f} s")

    runner_dao = Dao(settings)          # the runner has its own pool, like a worker process
    ctx.cleanups.append(runner_dao.close)
    runner = JobRunner(settings, runner_dao, Recorder, kind="worker")
    thread = threading.Thread(target=runner.run, name="bench-runner", daemon=True)

    def stop_runner() -> None:
        runner.stop()
        thread.join(60)
        if thread.is_alive():
            say("runner did not stop within 60 s")
    t_start = time.monotonic()
    thread.start()
    ctx.cleanups.append(stop_runner)

    # warm-up; the rate of its second half sizes the windows
    sleep_until(t_start + args.warmup)
    half = t_start + args.warmup / 2
    rate0 = count_in(Recorder.of(big), half, t_start + args.warmup) / (args.warmup / 2)
    sent_so_far = len(Recorder.of(big))
    kinds = []
    normal, high = args.injections, args.high
    while normal or high:   # N H N H ... then the rest
        if normal:
            kinds.append("normal")
            normal -= 1
        if high:
            kinds.append("high")
            high -= 1
    windows = 2 * len(kinds) + 1
    left_s = (args.big - sent_so_far) / max(rate0, 1.0)
    w = min(args.window, 0.85 * left_s / windows)
    say(f"warm-up rate {rate0:,.0f}/s, {sent_so_far:,} sent, ~{left_s:.0f} s of work left: "
        f"{windows} windows of {w:.2f} s ({len(kinds)} injections: {' '.join(k[0].upper() for k in kinds)})")
    if w < 1.5:
        raise RuntimeError(f"the big job would run out: windows of {w:.2f} s; use --big larger or "
                           "fewer --injections/--high")

    a_windows: list[tuple[float, float]] = []
    injections: list[Injection] = []
    t = time.monotonic()
    for i, kind in enumerate(kinds):
        a_windows.append((t, t + w))
        sleep_until(t + w)
        inj = Injection(kind)
        t0 = time.monotonic()
        inj.job_id = make_job(dao, small_key, SMALL_N, SMALL_SENDER, f"s{i}",
                              priority=PRIORITIES[kind])
        inj.enqueued = time.monotonic()     # create_job has committed
        inj.enqueued_wall = time.time()
        inj.create_s = inj.enqueued - t0
        inj.window = (inj.enqueued, inj.enqueued + w)
        injections.append(inj)
        sleep_until(inj.enqueued + w)
        times = Recorder.of(inj.job_id)
        if times:
            inj.first_s = min(times) - inj.enqueued
        if len(times) >= SMALL_N:
            inj.last_s = sorted(times)[SMALL_N - 1] - inj.enqueued
        say(f"{kind:6} job {inj.job_id}: first {fmt_s(inj.first_s)}, 10th {fmt_s(inj.last_s)}")
        t = inj.enqueued + w
    a_windows.append((t, t + w))
    sleep_until(t + w + 0.6)    # + a flush interval, so the last small job's row is final
    t_end = time.monotonic()
    stop_runner()
    ctx.cleanups.remove(stop_runner)

    # --- figures ---------------------------------------------------------------------------
    big_times = Recorder.of(big)
    if not big_times or max(big_times) < a_windows[-1][1]:
        raise RuntimeError("the big job stopped sending before the last window ended; the "
                           "windows are not comparable (lower --window or raise --big)")
    for inj in injections:    # finished_at from the database, after the fact (no polling)
        job = dao.job(inj.job_id, with_counts=True)
        inj.status = job.status
        if job.finished_at is not None:
            fin = job.finished_at.replace(tzinfo=UTC).timestamp()
            inj.finished_s = fin - inj.enqueued_wall
        late = Recorder.of(inj.job_id)
        if len(late) >= SMALL_N and inj.last_s is None:
            inj.last_s = sorted(late)[SMALL_N - 1] - inj.enqueued   # beyond its window
    def rate(win: tuple[float, float]) -> float:
        return count_in(big_times, *win) / (win[1] - win[0])
    a_rates = [rate(win) for win in a_windows]
    ratios = {"normal": [], "high": []}
    for i, inj in enumerate(injections):
        base = (a_rates[i] + a_rates[i + 1]) / 2
        ratios[inj.kind].append(rate(inj.window) / base)
    noise = [a_rates[i] / ((a_rates[i - 1] + a_rates[i + 1]) / 2)
             for i in range(1, len(a_rates) - 1)]
    big_sent = dao.recipient_counts(big).get("sent", 0)

    s = settings
    print()
    print(f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end; "
          f"MariaDB {version} (private, socket); Python {sys.version.split()[0]}. "
          f"Runner: 1 in-process thread, POLL_INTERVAL={s.poll_interval}, "
          f"CLAIM_BATCH={s.claim_batch}, RUNNER_CONCURRENCY={s.runner_concurrency}, "
          f"RECORD_FLUSH_ROWS={s.record_flush_rows}, RECORD_FLUSH_INTERVAL="
          f"{s.record_flush_interval}, SENDER_RATE_PER_MINUTE=0, SENDER_DAILY_CAP=0, "
          f"LOG_LEVEL=WARNING; transport: notes the time of each send after sleeping "
          f"{args.latency * 1000:g} ms. Big job "
          f"{args.big:,} recipients; windows of {w:.2f} s (A B A B ... A); the big job sent "
          f"{big_sent:,} in {t_end - t_start:.0f} s and was still sending at the end.")
    print()
    print("| measurement | result | goal | verdict |")
    print("|---|---|---|---|")
    ok = True
    med_a = statistics.median(a_rates)
    print(f"| big job alone (A windows, n={len(a_rates)}) | median **{med_a:,.0f}/s** "
          f"(range {min(a_rates):,.0f}–{max(a_rates):,.0f}) | — | — |")
    noise_dev = statistics.median(abs(x - 1) for x in noise) if noise else 0.0
    print(f"| noise: A window vs mean of its neighbour A windows (n={len(noise)}) | median "
          f"deviation {noise_dev * 100:.1f} %, range {min(noise, default=1):.3f}–"
          f"{max(noise, default=1):.3f} | — | — |")
    for kind in ("normal", "high"):
        inj = [x for x in injections if x.kind == kind]
        if not inj:
            continue
        label = "same priority (both normal), another API key" if kind == "normal" else \
            "small job priority **high**, big normal"
        lasts = [x.last_s for x in inj]
        missing = sum(1 for x in lasts if x is None)
        done = [x for x in lasts if x is not None]
        med_last = statistics.median(done) if done else None
        max_last = max(done) if done else None
        met = missing == 0 and max_last is not None and max_last < SMALL_DONE_GOAL_S
        ok &= met
        firsts = [x.first_s for x in inj if x.first_s is not None]
        fins = [x.finished_s for x in inj if x.finished_s is not None]
        print(f"| small job ({SMALL_N}), {label}: enqueue → 10th send (n={len(inj)}) | "
              f"median **{fmt_s(med_last)}**, max **{fmt_s(max_last)}**"
              f"{f', {missing} not done in time' if missing else ''}; first send median "
              f"{fmt_s(statistics.median(firsts) if firsts else None)}; enqueue → job "
              f"`finished_at` median {fmt_s(statistics.median(fins) if fins else None)}, max "
              f"{fmt_s(max(fins) if fins else None)} | < {SMALL_DONE_GOAL_S:g} s (max) | "
              f"{'met' if met else '**not met**'} |")
        r = ratios[kind]
        med_r = statistics.median(r)
        met = (1 - med_r) < SLOWDOWN_GOAL
        ok &= met
        b_rates = [rate(x.window) for x in inj]
        print(f"| big job with that small job (B windows from its enqueue, n={len(r)}) | "
              f"median {statistics.median(b_rates):,.0f}/s; B / mean(A before, A after): "
              f"median **{med_r:.3f}** (slowdown {(1 - med_r) * 100:+.1f} %), range "
              f"{min(r):.3f}–{max(r):.3f} | slowdown < {SLOWDOWN_GOAL * 100:g} % (median) | "
              f"{'met' if met else '**not met**'} |")
    print()
    print("create_job of the small job took median "
          f"{statistics.median(x.create_s for x in injections) * 1000:.0f} ms (before the "
          "clock starts). Statuses of the small jobs: "
          f"{', '.join(sorted({x.status for x in injections}))}.")
    extra = " ".join(a for a in sys.argv[1:])
    print(f"\nCommand: `{COMMAND}{' ' + extra if extra else ''}`")
    print("\nall goals met" if ok else "\nsome goals NOT met")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    ctx = Ctx(args, Path(tempfile.mkdtemp(prefix="mailjobs-bench-fairness-")))
    started = time.perf_counter()
    status = 1
    try:
        status = run(ctx)
    except KeyboardInterrupt as exc:
        say(f"interrupted: {exc}")
    finally:
        for cleanup in reversed(ctx.cleanups):
            try:
                cleanup()
            except Exception as exc:  # noqa: BLE001 -- go on cleaning the rest
                say(f"cleanup {getattr(cleanup, '__qualname__', cleanup)} failed: {exc}")
        if args.keep_tmp:
            say(f"kept {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)
        say(f"whole run {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
