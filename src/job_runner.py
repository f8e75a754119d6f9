"""The JobRunner: poll, claim, send, record, heartbeat. One code path, run as a daemon thread in
the API process (`EmbeddedRunner`) or as a standalone process (`mailjobs worker`).

The loop (rq's habit: a stop event, `stop.wait(poll)` instead of sleep, nothing swallowed):
  heartbeat -> collect finished sends -> record them in batches -> renew leases -> claim more
Claims are committed before any mail is sent, and no database connection is held while talking
to Gmail: the sending threads only see the claimed rows. Every exception that escapes an
iteration is logged with its traceback and the loop goes on after a bounded backoff.

A far database (issue 12: every round trip slow) must not slow the sends: outcomes are written
by a recorder thread, one batch in flight at a time, while the loop goes on collecting and
claiming; and the runner holds enough claimed work to cover its own loop (HOLD_CYCLES claim
passes' worth of its send rate, in claims that grow with the claim pass's duration up to
CLAIM_BATCH_MAX), so the sending threads never wait on a claim.
"""
from __future__ import annotations

if __name__ == "__main__":   # `python -m job_runner`: stop signals handled before the imports
    from mailjobs import entry

    entry.install()

import functools
import logging
import math
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from mailjobs import job_control, metrics, retention, scheduling
from mailjobs.attachments.jobs import RecipientFiles
from mailjobs.dao_mysql import Dao, DatabaseUnavailable
from mailjobs.db import guard as db_guard
from mailjobs.deliverability import bounces
from mailjobs.email_scheduler import EmailScheduler, Outcome, TransportFactory
from mailjobs.error_rate import ErrorWindows
from mailjobs.job_watch import JobWatch
from mailjobs.periodic import Every, Periodic
from mailjobs.rate_limit import Limits
from mailjobs.records import FinalOutcome, GiveBack, Job, Recipient, RetryOutcome, SentOutcome
from mailjobs.send_pool import FairPool
from mailjobs.settings import Settings
from mailjobs.states import (
    FINAL_JOB_STATUSES,
    FINAL_STATUS_OF,
    Deferral,
    JobStatus,
    PausedBy,
    RunnerState,
    SenderAction,
    SenderAuthState,
    SendResult,
)
from mailjobs.transports import send_as, test_keys
from mailjobs.transports.base import Transport
from mailjobs.webhooks import dispatch as webhook_dispatch

log = logging.getLogger("mailjobs.runner")
# Claimed-but-unsent recipients a runner holds, in seconds of its own send rate.
HOLD_SECONDS = 0.5
# ... and at least this many of its loop's claim passes (each timed: a far database makes them
# long), so the hand never runs dry while the next claim is on its way; never more than half
# of the lease guard's time.
HOLD_CYCLES = 3
# What one claim pass takes on a near database (seconds): a pass that takes k times this may
# claim k x CLAIM_BATCH in one transaction (up to CLAIM_BATCH_MAX), so the recipients claimed
# per second of claiming stay what CLAIM_BATCH gives near the database.
NEAR_CLAIM_PASS = 0.02
# The lease guard: a send (or an in-doubt check) is started only while less than LEASE_SECONDS
# minus the transport's timeout (the longest one send may take) has passed since its lease was
# last confirmed (claimed or renewed, timed from before the statement was sent), and always
# until LEASE_GUARD_MIN of the lease. So a send started in time ends before another runner may
# take the claim over. Leases are renewed every third of LEASE_SECONDS: a runner that reaches
# its database never trips it.
LEASE_GUARD_MIN = 1 / 2


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    since_log_sent: int = 0
    since_log_failed: int = 0


@dataclass
class InHand:
    """What this runner holds: futures of claimed recipients, by recipient id."""
    futures: dict[int, Future[Outcome]] = field(default_factory=dict)
    recipients: dict[int, Recipient] = field(default_factory=dict)
    jobs_of: dict[int, int] = field(default_factory=dict)  # recipient id -> job id
    # recipient id -> when its lease was last confirmed (monotonic; see LEASE_GUARD)
    lease_from: dict[int, float] = field(default_factory=dict)

    def job_ids(self) -> set[int]:
        return set(self.jobs_of.values())

    def drop(self, rid: int) -> None:
        self.futures.pop(rid, None)
        self.recipients.pop(rid, None)
        self.jobs_of.pop(rid, None)
        self.lease_from.pop(rid, None)


class _SendingThread(threading.local):
    """What each sending thread keeps: its transport, and its test keys' transports."""

    def __init__(self) -> None:
        self.transport: Transport | None = None
        self.test_transports: dict[str, Transport] = {}


def _deferral(o: Outcome) -> Deferral:
    """How a retry counts towards MAX_DEFER: refused before it left, not tried, or an attempt."""
    if o.deferred:
        return Deferral.REFUSED
    return Deferral.NOT_TRIED if o.refund else Deferral.ATTEMPT


class JobRunner:
    def __init__(self, settings: Settings, dao: Dao, transport_factory: TransportFactory,
                 kind: str = "worker", runner_id: str | None = None) -> None:
        self.settings = settings
        self.dao = dao
        self.kind = kind
        self.id = runner_id or f"r-{socket.gethostname()[:20]}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stop_event = threading.Event()
        # set by wake() (the API process committed a job) or stop(): ends the idle wait early
        self.wakeup = threading.Event()
        self.files = RecipientFiles(dao, settings)   # attachments: shared ones cached
        self.scheduler = EmailScheduler(settings, self.files.files)
        self._factory = transport_factory
        # the far side's learned caps (learned_limits.py), when the transport has any
        self._learned = getattr(transport_factory, "limits", None)
        self._local = _SendingThread()
        self._transports: list[Transport] = []
        self._test_keys = test_keys.TestKeys(dao)   # test keys' jobs: never the real transport
        self._transports_lock = threading.Lock()
        self.stats = Stats()
        self.state = RunnerState.STARTING
        self._hand = InHand()
        # the jobs this runner claimed from, and their sends counted so far (for the logs):
        # dropped once the job is final and nothing of it is in hand (_evict_final)
        self._jobs: dict[int, Job] = {}
        self._progress: dict[int, int] = {}
        self._final: set[int] = set()   # jobs seen final, evicted once nothing of them is held
        # Jobs a claim of which failed on the database (timeout, lost connection): its COMMIT may
        # have reached the server all the same, leaving rows `sending` under this runner's name
        # that it does not hold; swept at the next claim pass (_sweep_claims_in_doubt).
        self._claims_in_doubt: dict[int, str] = {}   # job -> its sender
        self._outcomes: list[Outcome] = []
        # finished sends, (recipient id, future), put by the futures' callbacks
        self._done: queue.SimpleQueue[tuple[int, Future[Outcome]]] = queue.SimpleQueue()
        # the recorder: one outcome write in flight at a time, off the loop (see _flush)
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix=f"{self.id}-recorder")
        self._writing: tuple[Future[None], list[Outcome]] | None = None
        # what the loop itself does at intervals (its background rounds: self._rounds)
        self._flushes = Every(settings.record_flush_interval)
        self._heartbeats = Every(settings.heartbeat_interval, due_now=True)
        self._heartbeat_logs = Every(settings.heartbeat_log_interval)
        self._renewals = Every(settings.lease_seconds / 3)
        self._idle_claims = Every(settings.poll_interval, due_now=True)
        self._guard_tripped = False
        send_timeout = {"gmail": settings.gmail_timeout,
                        "smtp": settings.smtp_timeout}.get(settings.transport_name, 0.0)
        self._lease_guard = max(settings.lease_seconds - send_timeout,
                                LEASE_GUARD_MIN * settings.lease_seconds)
        self._rotation = 0
        self._rate = 0.0
        self._rate_at = time.monotonic()
        self._busy_at = 0.0    # the pool's busy seconds at the last measurement
        self._completed_since = 0
        self._pool: FairPool | None = None
        self._iteration_started = time.monotonic()
        self._pass_seconds = 0.0   # how long a loop pass with a claim takes (moving average)
        # auto-pause by error rate, counted in the sending threads (error_rate.py)
        self._errors = ErrorWindows(settings.error_window, settings.max_error_rate)
        self._limits = Limits(settings.sender_rate_per_minute, settings.sender_daily_cap,
                              settings.sender_burst_seconds)
        # DSNs in the Gmail senders' mailboxes, every BOUNCE_CHECK_INTERVAL (bounces.py)
        self._bounces = (bounces.BounceChecker(settings, dao, self.stop_event)
                         if settings.transport_name == "gmail" else None)
        # the Gmail senders' verified send-as addresses, every SEND_AS_CHECK_INTERVAL (send_as.py)
        self._send_as = (send_as.SendAsChecker(settings, dao, self.stop_event)
                         if settings.transport_name == "gmail" else None)
        # data retention, once per PURGE_INTERVAL over all runners (retention.py)
        self._purger = retention.Purger(settings, dao, self.stop_event, self.id)
        # held jobs' pauses and cancels, and expired jobs, read off the loop (job_watch.py)
        self._watch = JobWatch(settings, dao, self.stop_event, self.id)
        # the events outbox, delivered by a thread of its own (webhook_dispatch.py)
        self._webhooks = webhook_dispatch.Dispatcher(settings, dao, self.id, self.stop_event)
        # the background rounds, each started by tick() from the loop when due; never waited on
        self._rounds: list[Periodic] = [r for r in (self._bounces, self._send_as, self._purger)
                                        if r is not None]

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        s = self.settings
        log.info("runner %s started (%s, pid %d), poll %.1f s, concurrency %d, transport %s",
                 self.id, self.kind, os.getpid(), s.poll_interval, s.runner_concurrency,
                 s.transport_name)
        backoff = s.poll_interval
        # one thread more than a key may use: another key's recipient always finds one free
        concurrency = max(1, s.runner_concurrency)
        pool = self._pool = FairPool(concurrency + 1, per_key=concurrency, name=self.id)
        self._webhooks.start()
        self._watch.start()
        try:
            while not self.stop_event.is_set():
                self.wakeup.clear()   # a wake() from here on ends this pass's idle wait
                try:
                    busy = self._iteration(pool)
                    if self.state == RunnerState.DB_BACKOFF:
                        log.info("runner %s: database reachable again, resuming", self.id)
                    backoff = s.poll_interval
                except DatabaseUnavailable as exc:
                    backoff = min(max(backoff * 2, 1.0), s.db_backoff_max)
                    self.state = RunnerState.DB_BACKOFF
                    log.warning("runner %s: database unavailable (%s); next try in %.1f s",
                                self.id, exc, backoff)
                    self.stop_event.wait(backoff)
                    continue
                except Exception:
                    backoff = min(max(backoff * 2, 1.0), s.db_backoff_max)
                    log.exception("runner %s: iteration failed; next try in %.1f s", self.id, backoff)
                    self.stop_event.wait(backoff)
                    continue
                if not busy:
                    self.wakeup.wait(s.poll_interval)
        finally:
            self._shutdown(pool)

    def stop(self) -> None:
        """Warm stop: finish the messages in hand, release unsent claims, then return."""
        self.stop_event.set()
        if self._pool is not None:   # nothing that waits starts now (the loop may be mid-pass)
            self._pool.hold()
        self.wakeup.set()

    def wake(self) -> None:
        """Look for work now instead of at the next poll (any thread may call it): the API
        process that runs this runner has just committed a job."""
        self.wakeup.set()

    def _iteration(self, pool: FairPool) -> bool:
        """One pass; True when there is work in hand (so no idle wait is needed)."""
        self._iteration_started = time.monotonic()
        if self._heartbeats.due():
            self._heartbeat()
        if self._heartbeat_logs.due():
            self._log_heartbeat()
        self._collect(timeout=0.0)
        self._flush_if_due()
        if self._renewals.due():
            self._renew()
        self._act_on_watch()
        if self._learned is not None:
            self._learned.refresh()   # at most every learned_limits.REFRESH seconds
        for background in self._rounds:
            background.tick()   # starts a round when one is due; never waits
        claimed = self._claim(pool)
        if self._hand.futures:
            self.state = RunnerState.BUSY
            self._collect(timeout=self.settings.record_flush_interval)
            self._flush_if_due()
            return True
        self._flush(wait=True)
        self.state = RunnerState.IDLE
        return claimed > 0

    # --- claiming -------------------------------------------------------------------------
    def _hold_seconds(self) -> float:
        """Seconds of its send rate the runner holds: HOLD_SECONDS, or HOLD_CYCLES passes of
        its loop when those take longer (a far database), at most half the lease guard."""
        hold = max(HOLD_SECONDS, HOLD_CYCLES * self._pass_seconds)
        return min(hold, self._lease_guard / 2)

    def _claim_limit(self) -> int:
        """Most recipients claimed in one transaction: CLAIM_BATCH per NEAR_CLAIM_PASS of the
        loop's claim pass, between CLAIM_BATCH and CLAIM_BATCH_MAX."""
        s = self.settings
        scaled = int(s.claim_batch * self._pass_seconds / NEAR_CLAIM_PASS)
        return max(s.claim_batch, min(s.claim_batch_max, scaled))

    def _capacity(self) -> int:
        """How many claimed recipients to hold: _hold_seconds() of this runner's measured
        send rate, between 2 x concurrency and the claim limit (two claims' worth once claims
        grew past CLAIM_BATCH: the next claim starts while half the hand is still to send).
        Holding more would make a job posted now wait behind the backlog (sends go out in
        claim order); holding less would starve the sending threads."""
        floor = 2 * self.settings.runner_concurrency
        limit = self._claim_limit()
        most = limit if limit <= self.settings.claim_batch else 2 * limit
        return max(floor, min(most, int(self._rate * self._hold_seconds())))

    def _measure(self, completed: int) -> None:
        """Exponentially weighted send rate (recipients/s) of this runner, over the time its
        sending threads were busy: a hand that ran dry while a slow claim was on its way does
        not make the rate (and so the next claim) smaller."""
        self._completed_since += completed
        now = time.monotonic()
        if now - self._rate_at < 0.25:
            return
        busy = self._pool.busy_seconds() if self._pool is not None else now
        elapsed = busy - self._busy_at
        if elapsed < 0.001:   # too little sending to measure yet
            if self._completed_since == 0:
                self._rate_at, self._busy_at = now, busy
            return
        current = self._completed_since / elapsed
        self._rate = current if self._rate == 0 else 0.7 * self._rate + 0.3 * current
        self._rate_at, self._busy_at, self._completed_since = now, busy, 0

    def _timed_pass(self) -> None:
        """A claim pass ended: how long this loop pass took (its database work), averaged."""
        took = time.monotonic() - self._iteration_started
        self._pass_seconds = took if self._pass_seconds == 0 else \
            0.7 * self._pass_seconds + 0.3 * took

    def _claim(self, pool: FairPool) -> int:
        capacity = self._capacity()
        room = capacity - len(self._hand.futures)
        if self.stop_event.is_set():
            return 0
        idle_keys_only = room < capacity // 2
        busy_keys: set[int] = set()
        if idle_keys_only:
            # The hand is full of some keys' work (slow renders or sends hold it): a key with
            # nothing in hand still gets a thread's worth, once a poll, so its small job does
            # not wait behind that backlog (send_pool gives it a free thread).
            if not self._idle_claims.take():
                return 0
            room = self.settings.runner_concurrency
            busy_keys = {self._jobs[j].api_key_id for j in self._hand.job_ids() if j in self._jobs}
        claimed = self._claim_pass(pool, room, idle_keys_only, busy_keys)
        self._timed_pass()   # a pass that failed (the database unreachable) is not timed
        return claimed

    def _claim_pass(self, pool: FairPool, room: int, idle_keys_only: bool,
                    busy_keys: set[int]) -> int:
        limit = self._claim_limit()
        jobs = self.dao.claimable_jobs(limit=200)
        self._sweep_claims_in_doubt()
        if not jobs:
            return 0
        self._rotation += 1
        claimed = 0
        limited: set[str] = set()  # senders at their limit: skip their other jobs this pass
        for tier in scheduling.tiers(jobs, self._rotation):  # highest priority first
            each = scheduling.share(room, len(tier), self.settings.runner_concurrency)
            # A tier's claims reach the sending threads together, so that jobs of one priority
            # start together: handed over one by one, the first job's claim would be sending
            # while the next one's claim is still on its way to the database (a head start of
            # one claim's round trips, found under load by test_scheduling). Handed over at the
            # latest when as many jobs wait as there are threads: the pool shares those fairly,
            # and a job claimed later is preferred by the pool until it catches up.
            # (Handed over also when a claim fails: what was claimed before it is in hand.)
            waiting: list[tuple[Job, list[Recipient]]] = []
            try:
                for c in tier:
                    if room <= 0:
                        break
                    if c.sender in limited:
                        continue
                    if idle_keys_only:
                        if c.api_key_id in busy_keys:
                            continue
                        busy_keys.add(c.api_key_id)
                    n, reason = self._claim_job(c, min(room, each, limit), waiting)
                    if reason:
                        limited.add(c.sender)
                    claimed += n
                    room -= n
                    if len(waiting) > self.settings.runner_concurrency:
                        self._hand_over(pool, waiting)
            finally:
                self._hand_over(pool, waiting)
            if room <= 0:
                break
        return claimed

    def _claim_job(self, c: scheduling.Claimable, wanted: int,
                   waiting: list[tuple[Job, list[Recipient]]]) -> tuple[int, str | None]:
        """Claim up to `wanted` of one job, its sendable recipients added to `waiting`;
        returns how many were claimed, and why fewer if the sender's limits held it back."""
        claimed_at = time.monotonic()
        try:
            rows, reason, suppressed = self.dao.claim_checked(
                c.job_id, c.sender, self.id, wanted, self.settings.lease_seconds, self._limits,
                api_key_id=c.api_key_id, unlimited=self._test_keys.mode(c.api_key_id) is not None)
        except DatabaseUnavailable:
            self._claims_in_doubt[c.job_id] = c.sender
            raise
        if not rows:
            if reason:
                log.debug("job=%d: nothing claimed (%s)", c.job_id, reason)
            return 0, reason
        job = self._job(c.job_id)
        self._errors.claimed_again(c.job_id)
        log.info("job=%d claimed %d recipient(s) (runner %s)%s", c.job_id, len(rows), self.id,
                 f"; limited by {reason}" if reason else "")
        sendable: list[Recipient] = []
        # Addresses suppressed since the job was stored (unsubscribed, bounced): never sent.
        for r in rows:
            if r.id in suppressed:
                self._outcomes.append(Outcome(
                    r, job, SendResult.SUPPRESSED, error_code="suppressed", refund=True,
                    error=f"not sent: the address is on the suppression list "
                          f"({suppressed[r.id]})"))
                continue
            self._hand.recipients[r.id] = r
            self._hand.jobs_of[r.id] = c.job_id
            self._hand.lease_from[r.id] = claimed_at
            sendable.append(r)
        if sendable:
            waiting.append((job, sendable))
        return len(rows), reason

    def _sweep_claims_in_doubt(self) -> None:
        """Claims whose transaction failed on the client's side (the answer to its COMMIT
        lost: the server froze, the link dropped) but committed on the server's: rows `sending`
        under this runner's name that it neither holds nor has outcomes of. No other runner
        takes them (due_claimable leaves a runner's own claims to it) and this one would never
        send them: given back, attempt and daily reservation refunded."""
        if not self._claims_in_doubt:
            return
        known = set(self._hand.recipients) | {o.recipient.id for o in self._outcomes}
        if self._writing is not None:
            known |= {o.recipient.id for o in self._writing[1]}
        while self._claims_in_doubt:
            job_id, sender = next(iter(self._claims_in_doubt.items()))
            orphans = [rid for rid in self.dao.claims_of(self.id, job_id) if rid not in known]
            if orphans:
                self.dao.release(self.id, GiveBack(tuple(orphans), (), {sender: len(orphans)}))
                log.warning("job=%d: %d claim(s) committed while their answer was lost (the "
                            "database did not answer); given back", job_id, len(orphans))
            del self._claims_in_doubt[job_id]

    def _hand_over(self, pool: FairPool, waiting: list[tuple[Job, list[Recipient]]]) -> None:
        """Claimed recipients to the sending threads; empties `waiting`."""
        for job, rows in waiting:
            for r in rows:
                future = pool.submit(job.api_key_id, job.id, self._send_one, job, r)
                self._hand.futures[r.id] = future
                future.add_done_callback(functools.partial(self._finished, r.id))
        waiting.clear()

    def _finished(self, rid: int, future: Future[Outcome]) -> None:
        """A send ended (called in its sending thread, or by whoever cancelled it)."""
        self._done.put((rid, future))

    def _job(self, job_id: int) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            job = self.dao.job(job_id, with_counts=True)
            assert job is not None, f"claimed recipients of a missing job {job_id}"
            self._progress[job_id] = job.counts.get("sent", 0) + job.counts.get("failed", 0)
            self._jobs[job_id] = job
        return job

    # --- sending (in the pool's threads) -------------------------------------------------
    def _transport(self) -> Transport:
        transport = self._local.transport
        if transport is None:
            transport = self._local.transport = self._factory()
            with self._transports_lock:
                self._transports.append(transport)
        return transport

    def _transport_for(self, job: Job) -> Transport:
        """The thread's transport, or for a test key's job its test transport (issue 18)."""
        mode = self._test_keys.mode(job.api_key_id)
        if mode is None:
            return self._transport()
        kept = self._local.test_transports
        if mode not in kept:
            kept[mode] = test_keys.test_transport(mode, self.settings)
            with self._transports_lock:
                self._transports.append(kept[mode])
        return kept[mode]

    def _send_one(self, job: Job, r: Recipient) -> Outcome:
        """In a sending thread: one claimed recipient, unless its job's error rate tripped
        (then it goes back unsent) or its lease may run out before the send ends."""
        if self._errors.tripped(job.id):
            return Outcome(r, job, SendResult.RETRY, error_code="job_paused", refund=True,
                           not_sent=True, error="not sent: the job was auto-paused (too many of its sends "
                                 "failed); it is sent once the job is resumed")
        held = self._lease_lost(job, r)
        if held is not None:
            return held
        try:
            # what the send needs from the database (the sender's credentials) must come before
            # the guard's time, so the send itself still starts in time
            left = self._lease_guard - (time.monotonic() - self._hand.lease_from.get(r.id, 0.0))
            with db_guard.deadline(left):
                outcome = self.scheduler.send(self._transport_for(job), job, r)
        except Exception as exc:  # a bug before the transport was called: nothing was sent
            outcome = self.scheduler.internal_error(exc, job, r, attempted=False)
        self._errors.count(outcome)
        return outcome

    def _lease_lost(self, job: Job, r: Recipient) -> Outcome | None:
        """In a sending thread, before a send starts: when the claim's lease may run out
        before the send ends (renewals failed: the database is unreachable), the send is not
        started. The outcome gives the claim back (attempt refunded); written, when the
        database answers again, only if no other runner took the claim over meanwhile."""
        confirmed = self._hand.lease_from.get(r.id)
        age = time.monotonic() - confirmed if confirmed is not None else math.inf
        if age < self._lease_guard:
            return None
        if confirmed is None:   # a renewal found it in another runner's hands
            return Outcome(r, job, SendResult.RETRY, error_code="lease_expired", refund=True,
                           error="not sent: another runner took the claim over while its lease "
                                 "could not be renewed")
        if not self._guard_tripped:
            self._guard_tripped = True
            log.warning("runner %s: leases not confirmed for %.1f s (LEASE_SECONDS %d): not "
                        "starting sends of claims another runner may take over", self.id, age,
                        self.settings.lease_seconds)
        return Outcome(r, job, SendResult.RETRY, error_code="lease_expired", refund=True,
                       error=f"not sent: its lease was not renewed for {age:.1f} s (the "
                             "database was unreachable), so another runner may own it")

    # --- recording ------------------------------------------------------------------------
    def _collect(self, timeout: float) -> None:
        """Take the finished sends (waiting up to `timeout` for the first): as many queue
        reads as sends finished, whatever the size of the hand."""
        if not self._hand.futures:
            return
        finished: list[tuple[int, Future[Outcome]]] = []
        try:
            finished.append(self._done.get(timeout=timeout) if timeout > 0
                            else self._done.get_nowait())
            while True:
                finished.append(self._done.get_nowait())
        except queue.Empty:
            pass
        n = 0
        for rid, future in finished:
            if self._hand.futures.get(rid) is not future:
                continue   # cancelled and given back already (pause, cancel, stop)
            self._hand.drop(rid)
            outcome = future.result()
            self._outcomes.append(outcome)
            n += 1
        self._measure(n)
        self._pause_tripped()

    def _flush_if_due(self) -> None:
        if len(self._outcomes) >= self.settings.record_flush_rows or self._flushes.due():
            self._flush()

    def _flush(self, wait: bool = False) -> None:
        """Hand the outcomes collected so far to the recorder thread, when no write is in
        flight (one at a time: the outcomes collected meanwhile wait for the next). With `wait`,
        return only once every outcome collected is written. A write that failed puts its
        outcomes back (written later, once the database answers) and raises here."""
        self._settle(block=wait)
        if self._writing is not None:
            return
        self._flushes.mark()
        if not self._outcomes:
            return
        outcomes, self._outcomes = self._outcomes, []
        self._writing = (self._recorder.submit(self._write, outcomes), outcomes)
        if wait:
            self._settle(block=True)

    def _settle(self, block: bool) -> None:
        """The write in flight, when it ended (or, with `block`, once it ends): what follows
        a write (logs, sender actions, finished jobs) runs here, in the loop's thread."""
        if self._writing is None:
            return
        future, outcomes = self._writing
        if not block and not future.done():
            return
        self._writing = None
        try:
            future.result()
        except BaseException:
            self._outcomes[:0] = outcomes
            raise
        self._after_write(outcomes)

    def _write(self, outcomes: list[Outcome]) -> None:
        """In the recorder thread: one batch of outcomes, one transaction."""
        sent = [SentOutcome(o.recipient.id, o.provider_id)
                for o in outcomes if o.result == SendResult.SENT]
        failed = [FinalOutcome(o.recipient.id, FINAL_STATUS_OF[o.result], o.error_code or "error",
                               o.error or "", o.refund)
                  for o in outcomes if o.result in FINAL_STATUS_OF]
        retry = [RetryOutcome(o.recipient.id, o.error_code or "error", o.error or "", o.delay,
                              o.refund, o.in_doubt, _deferral(o))
                 for o in outcomes if o.result == SendResult.RETRY]
        not_sent: dict[str, int] = {}   # charged to the sender's daily count at claim
        for o in outcomes:
            if o.refund or o.not_sent:
                not_sent[o.job.sender_email] = not_sent.get(o.job.sender_email, 0) + 1
        self.dao.record_outcomes(self.id, sent, failed, retry, not_sent)

    def _after_write(self, outcomes: list[Outcome]) -> None:
        if self._learned is not None:
            self._learned.flush()     # successes towards raising a lowered cap
        for o in outcomes:
            self._log_outcome(o)
        for o in outcomes:
            if o.sender_action:
                self._sender_action(o)
        waiting = self._waiting_jobs()
        for job_id in {o.job.id for o in outcomes} - waiting:
            self._finish_if_done(job_id)
        self._evict_final()

    def _log_outcome(self, o: Outcome) -> None:
        job_id, r = o.job.id, o.recipient
        metrics.SENDS.labels(metrics.sender_label(o.job.sender_email),
                             "recovered" if o.recovered else o.result, o.error_code or "").inc()
        if o.result in (SendResult.SENT, SendResult.FAILED, SendResult.EXPIRED):
            self._progress[job_id] = self._progress.get(job_id, 0) + 1
        where = f"job={job_id} [{self._progress.get(job_id, 0)}/{o.job.total}]"
        # the same facts as fields, for LOG_FORMAT=json (the text format shows the message only)
        extra = {"job_id": job_id, "recipient_id": r.id, "to_email": r.to_email,
                 "outcome": "recovered" if o.recovered else o.result,
                 "error_code": o.error_code, "attempt": r.attempts, "runner": self.id}
        if o.result == SendResult.SENT:
            self.stats.sent += 1
            self.stats.since_log_sent += 1
            if o.recovered:
                log.warning("%s in-doubt send to %s recovered: found at Gmail as %s (%s), not "
                            "sent again; recipient=%d", where, r.to_email, o.provider_id,
                            r.message_id, r.id, extra=extra)
                return
            log.info("%s sent to %s provider_id=%s recipient=%d attempt=%d", where, r.to_email,
                     o.provider_id, r.id, r.attempts, extra=extra)
        elif o.result == SendResult.EXPIRED:
            log.warning("%s expired %s: %s recipient=%d", where, r.to_email, o.error, r.id,
                        extra=extra)
        elif o.result == SendResult.SUPPRESSED:
            log.info("%s suppressed %s: %s recipient=%d", where, r.to_email, o.error, r.id,
                     extra=extra)
        elif o.result == SendResult.HOLD:
            self.stats.failed += 1
            self.stats.since_log_failed += 1
            log.warning("%s held in doubt %s: %s recipient=%d", where, r.to_email, o.error,
                        r.id, extra=extra)
        elif o.result == SendResult.FAILED:
            self.stats.failed += 1
            self.stats.since_log_failed += 1
            log.warning("%s failed %s: %s [%s] recipient=%d attempt=%d", where, r.to_email,
                        o.error, o.error_code, r.id, r.attempts, extra=extra)
        else:
            self.stats.retried += 1
            log.warning("%s retry %s in %.1f s: %s [%s] recipient=%d attempt=%d", where,
                        r.to_email, o.delay, o.error, o.error_code, r.id, r.attempts, extra=extra)

    def _sender_action(self, o: Outcome) -> None:
        sender = o.job.sender_email
        if o.sender_action == SenderAction.DEFER:
            self.dao.defer_sender(sender, o.sender_delay, o.error or "daily limit")
            log.warning("sender %s deferred for %.0f s: %s", sender, o.sender_delay, o.error)
        else:
            by_auth = o.sender_action == SenderAction.PAUSE_AUTH
            state = SenderAuthState.AUTH_REVOKED if by_auth else SenderAuthState.CONFIG_ERROR
            paused_by = PausedBy.SENDER_AUTH if by_auth else PausedBy.SENDER_CONFIG
            reason = f"sender {sender} {state}: {o.error}"
            n = self.dao.pause_sender(sender, state, reason, paused_by, o.started_at)
            if n is None:
                log.warning("sender %s: %s; ignored: the sender was re-authorised since that "
                            "send began", sender, o.error)
                return
            log.error("%s; %d job(s) paused until an operator fixes it (mailjobs auth %s)",
                      reason, n, sender)
            self._watch.saw({j: JobStatus.PAUSED for j in self._hand.job_ids()
                             if j in self._jobs and self._jobs[j].sender_email == sender})

    def _pause_tripped(self) -> None:
        """Jobs whose error rate tripped in the sending threads: paused in the database, and
        their claims not started given back at the next pass."""
        for trip in self._errors.take_new():
            if job_control.auto_pause(self.dao, trip.job_id, PausedBy.ERROR_RATE, trip.reason):
                self._watch.saw({trip.job_id: JobStatus.PAUSED})
                log.error("job=%d %s; fix the cause, then POST /api/jobs/%d/resume",
                          trip.job_id, trip.reason, trip.job_id)

    def _act_on_watch(self) -> None:
        """What the job watch saw: jobs past their expires_at (their unsent recipients ended
        "expired"), and held jobs paused or cancelled: within a poll interval or so of a pause
        or cancel, give back what has not started."""
        stopped, expired = self._watch.take()
        self._final.update(j for j, st in stopped.items() if st in FINAL_JOB_STATUSES)
        for i, job_id in enumerate(expired):
            log.warning("job=%d reached its expires_at: unsent recipients expired", job_id)
            if job_id not in self._hand.job_ids():
                try:
                    self._finish_if_done(job_id)
                except DatabaseUnavailable:
                    self._watch.expired_again(expired[i:])   # finished once the database answers
                    raise
        jobs = self._hand.job_ids()
        # the jobs it holds claims of, and those it keeps (until it sees them final)
        self._watch.watch(jobs | self._jobs.keys())
        stopped = {j: st for j, st in stopped.items() if j in jobs}
        if stopped:
            self._give_back(stopped)
        self._evict_final()

    def _give_back(self, stopped: dict[int, str]) -> None:
        """Claims not started of the jobs paused or cancelled meanwhile: given back."""
        release: list[int] = []
        cancel: list[int] = []
        refunds: dict[str, int] = {}
        for rid, future in list(self._hand.futures.items()):
            job_id = self._hand.jobs_of[rid]
            if job_id in stopped and future.cancel():
                (cancel if stopped[job_id] == JobStatus.CANCELLED else release).append(rid)
                sender = self._jobs[job_id].sender_email
                refunds[sender] = refunds.get(sender, 0) + 1
                self._hand.drop(rid)
        if release or cancel:
            self.dao.release(self.id, GiveBack(tuple(release), tuple(cancel), refunds))
            for job_id, status in stopped.items():
                log.info("job=%d is %s: gave back its unsent claims (%d released, %d cancelled)",
                         job_id, status, len(release), len(cancel))

    def _waiting_jobs(self) -> set[int]:
        """Jobs with claims in hand or outcomes not yet written."""
        jobs = self._hand.job_ids() | {o.job.id for o in self._outcomes}
        if self._writing is not None:
            jobs |= {o.job.id for o in self._writing[1]}
        return jobs

    def _evict_final(self) -> None:
        """The one rule for what the runner keeps of a job (its row, its progress, its error
        window): dropped once the job is final (finished here, or seen final by the job watch:
        finished by another runner, cancelled) and nothing of it is in hand or to be written."""
        if not self._final:
            return
        for job_id in self._final - self._waiting_jobs():
            self._jobs.pop(job_id, None)
            self._progress.pop(job_id, None)
            self._errors.forget(job_id)
            self._final.discard(job_id)

    def _finish_if_done(self, job_id: int) -> None:
        job = self.dao.finish_job_if_done(job_id)
        if job is None:
            return
        self._final.add(job_id)
        self._evict_final()
        assert job.finished_at is not None   # finished just now
        elapsed = (job.finished_at - job.started_at).total_seconds() if job.started_at else 0.0
        log.info("job=%d %s: %s in %.1f s", job_id, job.status,
                 ", ".join(f"{k}={v}" for k, v in sorted(job.counts.items())), elapsed)

    # --- leases and heartbeats ------------------------------------------------------------
    def _renew(self) -> None:
        """Every third of LEASE_SECONDS: the leases of the claims in hand."""
        lease = self.settings.lease_seconds
        started = self._renewals.mark()
        ids = list(self._hand.futures)
        if ids:
            held = self.dao.renew_leases(self.id, ids, lease)
            for rid in ids:   # confirmed from before the statement went out (conservative)
                if rid in held and rid in self._hand.lease_from:
                    self._hand.lease_from[rid] = started
                elif rid not in held:
                    # taken over while this runner could not renew it: another runner sends
                    # it now; its send is never started here (the lease guard refuses it)
                    self._hand.lease_from.pop(rid, None)
            if len(held) < len(ids):
                log.warning("runner %s: %d claim(s) were taken over by another runner while "
                            "their leases could not be renewed; not sending them from here",
                            self.id, len(ids) - len(held))
            if self._guard_tripped:
                self._guard_tripped = False
                log.info("runner %s: leases renewed again; sending resumes", self.id)

    def _heartbeat(self) -> None:
        """Every HEARTBEAT_INTERVAL: this runner's row in `runners` (due again at once when
        the database did not take it)."""
        started = time.monotonic()
        jobs = self._hand.job_ids()
        self.dao.runner_heartbeat({
            "id": self.id, "host": socket.gethostname()[:255], "pid": os.getpid(),
            "kind": self.kind, "state": self.state.value, "job": min(jobs) if jobs else None,
            "sent": self.stats.sent, "failed": self.stats.failed})
        self._heartbeats.mark(started)

    def _log_heartbeat(self) -> None:
        """Every HEARTBEAT_LOG_INTERVAL: a log line with what the runner did since the last."""
        elapsed = max(1e-6, self._heartbeat_logs.since())
        log.info("runner %s heartbeat: state=%s jobs_in_hand=%s in_flight=%d sent=%d "
                 "failed=%d rate=%.1f/s db_conns_in_use=%d", self.id, self.state,
                 sorted(self._hand.job_ids()) or "-", len(self._hand.futures),
                 self.stats.since_log_sent, self.stats.since_log_failed,
                 self.stats.since_log_sent / elapsed, self.dao.connections_in_use)
        self.stats.since_log_sent = self.stats.since_log_failed = 0
        self._heartbeat_logs.mark()

    # --- stopping -------------------------------------------------------------------------
    def _shutdown(self, pool: FairPool) -> None:
        """Let sends in progress finish, record them, give back what was never started."""
        self.state = RunnerState.STOPPING
        not_started = [rid for rid, f in self._hand.futures.items() if f.cancel()]
        refunds: dict[str, int] = {}
        for rid in not_started:
            job = self._jobs.get(self._hand.jobs_of[rid])
            if job is not None:
                refunds[job.sender_email] = refunds.get(job.sender_email, 0) + 1
        pool.shutdown(wait=True)
        try:
            for rid, future in list(self._hand.futures.items()):
                if rid not in not_started:
                    self._outcomes.append(future.result())
            self._flush(wait=True)
            if not_started:
                n = self.dao.release(self.id, GiveBack(tuple(not_started), refunds=refunds))
                log.info("runner %s released %d unsent claim(s)", self.id, n)
            self.state = RunnerState.STOPPED
            self._heartbeat()
            self._log_heartbeat()
        except DatabaseUnavailable as exc:
            log.error("runner %s could not record its last outcomes (%s); their leases will "
                      "expire and another runner will take them over", self.id, exc)
        finally:
            self._recorder.shutdown(wait=True)   # nothing in flight once _flush(wait) ran
            for transport in self._transports:
                transport.close()
            if self._bounces is not None:   # it stops between two messages (stop_event)
                self._bounces.join(2 * self.settings.gmail_timeout)
            if self._send_as is not None:
                self._send_as.join(2 * self.settings.gmail_timeout)
            self._purger.join(2 * self.settings.db_read_timeout)   # stops between batches
            self._watch.join(2 * self.settings.db_read_timeout)
            self.stop_event.set()   # also when the loop ended by a crash: the webhook thread
            self._webhooks.join(2 * self.settings.webhook_timeout)  # ends after its POSTs
        log.info("runner %s stopped: sent=%d failed=%d retried=%d", self.id, self.stats.sent,
                 self.stats.failed, self.stats.retried)


class EmbeddedRunner:
    """Keeps a JobRunner thread alive inside the API process: if the thread ever exits
    unexpectedly, logs ERROR and starts a new one."""

    def __init__(self, make_runner: Callable[[], JobRunner],
                 check_interval: float = 1.0) -> None:
        self._make_runner = make_runner
        self._check_interval = check_interval
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the runner and its thread change together
        self.runner: JobRunner | None = None
        self._thread: threading.Thread | None = None
        self._supervisor = threading.Thread(target=self._supervise, name="runner-supervisor",
                                            daemon=True)
        self.restarts = 0

    def start(self) -> EmbeddedRunner:
        self._start_runner()
        self._supervisor.start()
        return self

    def _start_runner(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self.runner = self._make_runner()
            self._thread = threading.Thread(target=self._run_logged, args=(self.runner,),
                                            name=self.runner.id, daemon=True)
            self._thread.start()

    @staticmethod
    def _run_logged(runner: JobRunner) -> None:
        try:
            runner.run()
        except BaseException:
            log.exception("embedded runner %s crashed", runner.id)

    def _supervise(self) -> None:
        while not self._stop.wait(self._check_interval):
            if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
                self.restarts += 1
                log.error("embedded runner thread %s exited unexpectedly; starting a new one "
                          "(restart %d)", self.runner.id if self.runner else "?", self.restarts)
                self._start_runner()

    def wake(self) -> None:
        """A job was committed in this process: the runner looks for it now."""
        runner = self.runner
        if runner is not None:
            runner.wake()

    def stop(self, timeout: float = 60.0) -> None:
        with self._lock:
            self._stop.set()
            runner, thread = self.runner, self._thread
        if runner is not None:
            runner.stop()
        if thread is not None:
            thread.join(timeout)


if __name__ == "__main__":
    from mailjobs.entry import main

    main(["worker"])
