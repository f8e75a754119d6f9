"""What a runner's loop acts on but need not wait for, read by a thread of its own every
POLL_INTERVAL: the statuses of the jobs the runner holds (a pause or a cancel: the loop gives
back their unsent claims) and the jobs that reached their `expires_at` (their unsent recipients
end "expired"). Each is a transaction of a few round trips: over a far database (0.2 s at 50 ms
each way) the loop's claim pass no longer waits for them.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from mailjobs.dao_mysql import Dao, DaoError
from mailjobs.settings import Settings
from mailjobs.states import ACTIVE_JOB_STATUSES

log = logging.getLogger("mailjobs.runner")


class JobWatch:
    def __init__(self, settings: Settings, dao: Dao, stop: threading.Event, name: str) -> None:
        self.settings = settings
        self.dao = dao
        self.stop = stop
        self._lock = threading.Lock()
        self._jobs: frozenset[int] = frozenset()
        self._stopped: dict[int, str] = {}
        self._expired: list[int] = []
        self._thread = threading.Thread(target=self._run, name=f"{name}-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def watch(self, jobs: Iterable[int]) -> None:
        """The jobs the loop holds claims of now (their statuses are read from now on)."""
        jobs = frozenset(jobs)
        with self._lock:
            self._jobs = jobs

    def take(self) -> tuple[dict[int, str], list[int]]:
        """What was seen since the last take: {held job: its status} of the held jobs that are
        no longer runnable, and the jobs that were expired."""
        with self._lock:
            stopped, self._stopped = self._stopped, {}
            expired, self._expired = self._expired, []
        return stopped, expired

    def saw(self, stopped: dict[int, str]) -> None:
        """Jobs the loop itself stopped (an auto-pause): taken with the next take(), without
        waiting for the next look."""
        with self._lock:
            self._stopped.update(stopped)

    def expired_again(self, jobs: list[int]) -> None:
        """Expired jobs the loop could not finish yet (the database did not answer): taken again
        with the next take()."""
        with self._lock:
            self._expired[:0] = jobs

    def check(self) -> None:
        """One look (the thread's, every POLL_INTERVAL)."""
        expired = self.dao.expire_due_jobs()
        with self._lock:
            jobs = self._jobs
        statuses = self.dao.job_statuses(sorted(jobs)) if jobs else {}
        stopped = {job: status for job, status in statuses.items() if status not in ACTIVE_JOB_STATUSES}
        with self._lock:
            self._expired.extend(expired)
            self._stopped.update(stopped)

    def _run(self) -> None:
        while not self.stop.wait(self.settings.poll_interval):
            try:
                self.check()
            except DaoError as exc:   # the loop logs the outage; the next look is a poll away
                log.debug("job watch: database unavailable (%s)", exc)
            except Exception:   # a bug: logged with its traceback; the watch goes on
                log.exception("job watch failed")
