"""A runner's periodic background round (the bounce check, the send-as check, the purge):
`tick()` from the runner's loop is cheap and never waits on the database or the network. At
most once a minute (or the interval, if shorter) it starts one round in a daemon thread, unless
the last round is still running; the round asks the database whether its work is due and for
whom, so N runners do not do it N times.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from mailjobs.dao_mysql import Dao
from mailjobs.settings import Settings


class Periodic:
    name = "periodic"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._last = float("-inf")

    def interval(self) -> float:
        """Seconds between rounds; 0 or less: off."""
        raise NotImplementedError

    def round(self) -> None:
        """One round, in the round's own thread."""
        raise NotImplementedError

    def tick(self) -> None:
        interval = self.interval()
        if interval <= 0 or (self._thread is not None and self._thread.is_alive()):
            return
        if time.monotonic() - self._last < min(interval, 60):
            return
        self._last = time.monotonic()
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
