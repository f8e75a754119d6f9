"""Work a runner does at intervals.

`Every(interval)`: the due-check of what the runner's loop does itself, in its own thread
(the heartbeat, the outcome flush, the lease renewal): cheap, monotonic, no thread of its own.

`Periodic`: a background round (the bounce check, the send-as check, the purge). `tick()` from
the runner's loop is cheap and never waits on the database or the network. At most once a
minute (or the interval, if shorter) it starts one round in a daemon thread, unless the last
round is still running; the round asks the database whether its work is due and for whom, so N
runners do not do it N times.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from mailjobs.dao_mysql import Dao
from mailjobs.settings import Settings


class Every:
    """Due every `interval` seconds (a number, or a function read at each check) after the
    last time it was marked; `due_now`: due at the first check."""

    def __init__(self, interval: float | Callable[[], float], due_now: bool = False) -> None:
        self._interval = interval
        self.last = float("-inf") if due_now else time.monotonic()

    @property
    def interval(self) -> float:
        return self._interval() if callable(self._interval) else self._interval

    def since(self, now: float | None = None) -> float:
        """Seconds since it was last marked."""
        return (time.monotonic() if now is None else now) - self.last

    def due(self, now: float | None = None) -> bool:
        return self.since(now) >= self.interval

    def mark(self, now: float | None = None) -> float:
        """Done now (or at `now`): due again an interval later. Returns that time."""
        self.last = time.monotonic() if now is None else now
        return self.last

    def take(self, now: float | None = None) -> bool:
        """True, and marked, when due."""
        if not self.due(now):
            return False
        self.mark(now)
        return True


class Periodic:
    name = "periodic"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._every = Every(lambda: min(self.interval(), 60), due_now=True)

    def interval(self) -> float:
        """Seconds between rounds; 0 or less: off."""
        raise NotImplementedError

    def round(self) -> None:
        """One round, in the round's own thread."""
        raise NotImplementedError

    def tick(self) -> None:
        if self.interval() <= 0 or (self._thread is not None and self._thread.is_alive()):
            return
        if not self._every.take():
            return
        self._thread = threading.Thread(target=self.round, name=self.name, daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class GmailRound(Periodic):
    """A periodic round that reads the senders' Gmail accounts (bounces, send-as lists) through
    the configured transport, or through `gmail_factory` (tests)."""

    def __init__(self, settings: Settings, dao: Dao, stop: threading.Event,
                 gmail_factory: Any = None) -> None:
        super().__init__()
        self.settings = settings
        self.dao = dao
        self.stop = stop
        self._factory = gmail_factory or self._gmail

    def _gmail(self) -> Any:
        from mailjobs.transports import factory as transports

        return transports.transport_factory(self.settings, self.dao)()
