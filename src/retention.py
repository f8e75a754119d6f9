"""Data retention: what is erased or deleted after how long, in batches that never hold a lock
for long. Run by the runners once per PURGE_INTERVAL (one runner at a time over all hosts) and
by `mailjobs purge [--dry-run]`.

What goes (cut-offs from the database's clock):
- recipients' `variables` of jobs finished more than RETENTION_DAYS ago are set to NULL (the
  rows, statuses, errors and counts stay, so the API still answers for the job); such a job can
  no longer be retried (job_control);
- bounce_messages processed more than RETENTION_DAYS ago;
- webhook events (and their POSTs) delivered more than RETENTION_DAYS ago;
- jobs finished more than JOB_RETENTION_DAYS ago, whole, with their recipients (0: never);
- runner rows without a heartbeat for DEAD_RUNNER_SECONDS (a day);
- attachments unused for ATTACHMENT_RETENTION_DAYS (no job that uses them unfinished or finished
  since), and uploads stopped halfway a day ago.
Suppressions are never purged: they are the record of who asked not to be mailed.

How: each batch is one short transaction over at most PURGE_BATCH rows of ONE finished job,
found without locking and changed by primary key, with the job row locked first (a retry of the
job waits for the batch; a batch after the retry sees the job running and leaves it). Claims
only touch rows of unfinished jobs, so purging never makes a claim wait. Between batches the
purge pauses PURGE_PAUSE (scaled to the batch's size).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, TypeVarTuple

from mailjobs import defaults
from mailjobs.dao_mysql import Dao, DaoError
from mailjobs.periodic import Periodic
from mailjobs.settings import Settings

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
log = logging.getLogger("mailjobs.retention")

LEASE_NAME = "purge"
JOBS_PER_QUERY = 100          # candidate jobs fetched at a time
KINDS = ("recipients_erased", "jobs_erased", "recipients_deleted", "jobs_deleted",
         "bounce_messages_deleted", "runners_deleted", "webhook_events_deleted",
         "attachments_deleted")


@dataclass(frozen=True)
class Cutoffs:
    now: datetime
    erase: datetime | None      # RETENTION_DAYS: recipients' variables, bounce messages
    delete: datetime | None     # JOB_RETENTION_DAYS: whole jobs
    runners: datetime           # dead runners' rows
    attachments: datetime | None = None   # ATTACHMENT_RETENTION_DAYS: unused attachments

    @classmethod
    def of(cls, settings: Settings, now: datetime) -> Cutoffs:
        def days(n: int) -> datetime | None:
            return now - timedelta(days=n) if n > 0 else None
        return cls(now, days(settings.retention_days), days(settings.job_retention_days),
                   now - timedelta(seconds=defaults.DEAD_RUNNER_SECONDS),
                   days(settings.attachment_retention_days))


@dataclass
class PurgeResult:
    cutoffs: Cutoffs
    dry_run: bool
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    batches: int = 0              # transactions that changed rows
    longest_batch: float = 0.0    # seconds, the longest of them
    busy: float = 0.0             # seconds inside batches (the rest: pauses, finding jobs)
    seconds: float = 0.0
    stopped: bool = False         # a stop signal (or a lost lease) ended it early

    def summary(self) -> str:
        """The one INFO line of a purge run."""
        c, k = self.counts, self.cutoffs
        parts = [f"erased the variables of {c['recipients_erased']} recipient(s) of "
                 f"{c['jobs_erased']} job(s) finished before {_day(k.erase)}",
                 f"deleted {c['jobs_deleted']} job(s) with {c['recipients_deleted']} "
                 f"recipient(s) finished before {_day(k.delete)}",
                 f"deleted {c['bounce_messages_deleted']} bounce message(s) processed before "
                 f"{_day(k.erase)}",
                 f"deleted {c['runners_deleted']} dead runner row(s) (no heartbeat since "
                 f"{_day(k.runners)})",
                 f"deleted {c['webhook_events_deleted']} webhook event(s) delivered before "
                 f"{_day(k.erase)}",
                 f"deleted {c['attachments_deleted']} attachment(s) unused since "
                 f"{_day(k.attachments)}"]
        verb = "purge --dry-run" if self.dry_run else "purge"
        tail = "" if self.dry_run else (
            f"; {self.batches} batch(es) in {self.seconds:.1f} s, longest "
            f"{self.longest_batch * 1000:.0f} ms" + ("; stopped early" if self.stopped else ""))
        text = "; ".join(parts)
        if self.dry_run:
            text = text.replace("erased", "would erase").replace("deleted", "would delete")
        return f"{verb}: {text}{tail}"

    def as_dict(self) -> dict[str, Any]:
        k = self.cutoffs
        return {"dry_run": self.dry_run, "counts": dict(self.counts),
                "cutoffs": {"now": _iso(k.now), "variables_and_bounce_messages": _iso(k.erase),
                            "jobs": _iso(k.delete), "runners": _iso(k.runners),
                            "attachments": _iso(k.attachments)},
                "batches": self.batches, "longest_batch_s": round(self.longest_batch, 4),
                "busy_s": round(self.busy, 3),
                "seconds": round(self.seconds, 3), "stopped": self.stopped}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _day(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M}Z" if value is not None else "(never: 0 days)"


class _Stopped(Exception):
    pass


class Purge:
    """One purge run. `on_batch` is called after every batch (the runner renews its lease
    there; returning False stops the run)."""

    def __init__(self, settings: Settings, dao: Dao, stop: threading.Event | None = None,
                 on_batch: Callable[[], bool] | None = None) -> None:
        self.settings = settings
        self.dao = dao
        self.stop = stop or threading.Event()
        self.on_batch = on_batch
        self.result: PurgeResult   # set by run(), which the batches below run under

    def run(self, dry_run: bool = False) -> PurgeResult:
        cut = Cutoffs.of(self.settings, self.dao.db_now())
        result = self.result = PurgeResult(cut, dry_run)
        if dry_run:
            result.counts.update(self.dao.purge_counts(cut.erase, cut.delete, cut.erase,
                                                       cut.runners))
            if cut.attachments is not None:
                result.counts["attachments_deleted"] = self.dao.unused_attachment_count(
                    cut.attachments)
            return result
        started = time.monotonic()
        try:
            if cut.delete is not None:
                self._delete_jobs(cut.delete)
            if cut.erase is not None:
                self._erase_variables(cut.erase)
                self._delete_rows(self.dao.delete_bounce_messages, cut.erase,
                                  "bounce_messages_deleted")
                self._delete_rows(self.dao.delete_delivered_webhooks, cut.erase,
                                  "webhook_events_deleted")
            self._delete_rows(self.dao.delete_dead_runners, cut.runners, "runners_deleted")
            if cut.attachments is not None:
                self._delete_rows(self.dao.delete_unused_attachments, cut.attachments,
                                  "attachments_deleted")
        except _Stopped:
            result.stopped = True
        finally:
            result.seconds = time.monotonic() - started
        return result

    # --- one batch ------------------------------------------------------------------------
    def _batch(self, call: Callable[[*Ts], T], *args: *Ts, rows: Callable[[T], int]) -> T:
        if self.stop.is_set():
            raise _Stopped()
        t0 = time.monotonic()
        out = call(*args)
        took = time.monotonic() - t0
        changed = rows(out)
        if changed:
            r = self.result
            r.batches += 1
            r.longest_batch = max(r.longest_batch, took)
            r.busy += took
            log.debug("purge batch %d: %s changed %d row(s) in %.1f ms", r.batches,
                      call.__name__, changed, took * 1000)
            if self.on_batch is not None and not self.on_batch():
                raise _Stopped()
            # a pause in proportion to the batch: many small jobs are not slowed to a crawl
            pause = self.settings.purge_pause * min(1.0, changed / self.settings.purge_batch)
            if pause > 0 and self.stop.wait(pause):
                raise _Stopped()
        return out

    # --- kinds ----------------------------------------------------------------------------
    def _delete_jobs(self, cutoff: datetime) -> None:
        size, counts = self.settings.purge_batch, self.result.counts
        while True:
            job_ids = self.dao.purge_candidates("delete", cutoff, JOBS_PER_QUERY)
            progress = False
            for job_id in job_ids:
                while True:
                    out = self._batch(self.dao.delete_job_batch, job_id, cutoff, size,
                                      rows=lambda o: 0 if o is None else o[0] + o[1])
                    if out is None:          # retried meanwhile: no longer finished
                        break
                    counts["recipients_deleted"] += out[0]
                    if out[1]:
                        counts["jobs_deleted"] += 1
                        progress = True
                        break
            if not progress:
                return

    def _erase_variables(self, cutoff: datetime) -> None:
        progress = True
        while progress:
            job_ids = self.dao.purge_candidates("erase", cutoff, JOBS_PER_QUERY)
            progress = False
            for job_id in job_ids:
                progress |= self._erase_job(job_id, cutoff)

    def _erase_job(self, job_id: int, cutoff: datetime) -> bool:
        """Erase one job's recipients' variables, status by status in id order, then any
        left (a row that changed status meanwhile), then mark the job done. False when the job
        stopped being eligible."""
        size, counts = self.settings.purge_batch, self.result.counts
        erased = 0
        for status in [*self.dao.job_recipient_statuses(job_id), None]:
            after = 0
            while True:
                out = self._batch(self.dao.erase_variables_batch, job_id, cutoff, status,
                                  after, size, rows=lambda o: 0 if o is None else o[1])
                if out is None:
                    return False
                seen, n, after = out
                erased += n
                if seen < size:
                    break
        counts["recipients_erased"] += erased
        if erased:
            counts["jobs_erased"] += 1
        return self.dao.mark_variables_erased(job_id, cutoff)

    def _delete_rows(self, call: Callable[[datetime, int], int], cutoff: datetime,
                     kind: str) -> None:
        size = self.settings.purge_batch
        while True:
            n = self._batch(call, cutoff, size, rows=lambda o: o)
            self.result.counts[kind] += n
            if n < size:
                return


def purge(settings: Settings, dao: Dao, dry_run: bool = False,
          stop: threading.Event | None = None) -> PurgeResult:
    """One purge run (the CLI's), logged as one INFO line."""
    result = Purge(settings, dao, stop).run(dry_run)
    log.info("%s", result.summary())
    return result


class Purger(Periodic):
    """The runner's periodic purge: `tick()` from its loop is cheap and never waits on the
    database. At most once a minute (or PURGE_INTERVAL, if shorter) a thread asks the database
    whether a purge is due; the runner whose UPDATE of the maintenance_leases row succeeds runs it in a daemon
    thread, renewing its lease (LEASE_SECONDS) while it works, so only one runner over all
    hosts purges at a time and a purge happens once per PURGE_INTERVAL."""

    name = "purge"

    def __init__(self, settings: Settings, dao: Dao, stop: threading.Event,
                 holder: str) -> None:
        self.settings = settings
        self.dao = dao
        self.stop = stop
        self.holder = holder
        super().__init__()
        self._renewed = 0.0

    def interval(self) -> float:
        return float(self.settings.purge_interval)

    def _renew(self) -> bool:
        lease = self.settings.lease_seconds
        if time.monotonic() - self._renewed < lease / 3:
            return True
        self._renewed = time.monotonic()
        if self.dao.renew_lease(LEASE_NAME, self.holder, lease):
            return True
        log.warning("purge by runner %s: lost its lease (another runner took it over); "
                    "stopping", self.holder)
        return False

    def round(self) -> None:
        # the lease is asked for here, not in tick(): over a far database that question costs
        # a few round trips (0.7 s at 50 ms each way) the runner's loop would not spend claiming
        try:
            if not self.dao.claim_lease(LEASE_NAME, self.holder, self.settings.purge_interval,
                                        self.settings.lease_seconds):
                return   # not due, or another runner purges now
        except DaoError as exc:
            log.debug("purge by runner %s: could not ask for the lease (%s)", self.holder, exc)
            return
        self._renewed = time.monotonic()
        note = "failed"
        try:
            result = Purge(self.settings, self.dao, self.stop, self._renew).run()
            note = f"{result.summary()} (runner {self.holder})"
            log.info("%s", note)
        except DaoError as exc:
            log.warning("purge by runner %s: database unavailable (%s); the next one is due "
                        "in %.0f s", self.holder, exc, self.settings.purge_interval)
            note = f"failed: {exc}"
        except Exception:   # a bug: logged with its traceback; the runner goes on
            log.exception("purge by runner %s failed", self.holder)
        finally:
            try:
                self.dao.finish_lease(LEASE_NAME, self.holder, note)
            except DaoError:
                log.debug("could not record the end of the purge; its lease will expire",
                          exc_info=True)
