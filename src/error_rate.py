"""Auto-pause by error rate, counted where the sends end: each job's last ERROR_WINDOW final
outcomes (sent or failed) are kept by the sending threads as each send ends. When more than
MAX_ERROR_RATE of a full window failed, the job trips: from then on this runner starts none of
its claimed sends (they go back unsent), and the runner's loop pauses the job in the database.
Counted in the loop instead, a job whose sends fail at once (a broken template) could use up
its whole claim before the loop saw the first window.
"""
from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass

from mailjobs.email_scheduler import Outcome
from mailjobs.states import SendResult


@dataclass(frozen=True)
class Trip:
    job_id: int
    reason: str


class ErrorWindows:
    def __init__(self, size: int, max_rate: float) -> None:
        self.size = size
        self.max_rate = max_rate
        self._lock = threading.Lock()
        self._windows: dict[int, deque[Outcome]] = {}
        self._tripped: set[int] = set()
        self._new: list[Trip] = []

    def count(self, o: Outcome) -> None:
        """A send ended (in its sending thread)."""
        if o.result not in (SendResult.SENT, SendResult.FAILED) or self.size <= 0:
            return
        job_id = o.job.id
        with self._lock:
            if job_id in self._tripped:
                return
            window = self._windows.setdefault(job_id, deque(maxlen=self.size))
            window.append(o)
            if len(window) < self.size:
                return
            failures = [w for w in window if w.result == SendResult.FAILED]
            if len(failures) / len(window) <= self.max_rate:
                return
            code, n = Counter(w.error_code for w in failures).most_common(1)[0]
            example = next(w.error for w in failures if w.error_code == code)
            reason = (f"auto-paused: {len(failures)} of the last {len(window)} sends failed, "
                      f"mostly {code} ({n}): {example}"[:1000])
            window.clear()
            self._tripped.add(job_id)
            self._new.append(Trip(job_id, reason))

    def tripped(self, job_id: int) -> bool:
        """Whether a send of this job must not start (in a sending thread, before it starts)."""
        with self._lock:
            return job_id in self._tripped

    def take_new(self) -> list[Trip]:
        """The trips since the last call, for the loop to pause their jobs."""
        with self._lock:
            new, self._new = self._new, []
        return new

    def claimed_again(self, job_id: int) -> None:
        """The job is claimable again (resumed after its pause): its sends start again, counted
        in a new window. A trip the loop has not taken yet stands."""
        with self._lock:
            if any(t.job_id == job_id for t in self._new):
                return
            self._tripped.discard(job_id)

    def forget(self, job_id: int) -> None:
        """The job finished."""
        with self._lock:
            self._windows.pop(job_id, None)
            self._tripped.discard(job_id)
