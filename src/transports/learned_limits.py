"""The far side's limits, learned from its refusals and shared by every runner.

An SMTP server that allows N connections per client answers the next one with `421 too many
connections`; Gmail answers a sender's request beyond its concurrency with 429 "Too many
concurrent requests for user". Neither publishes N. A refusal while others were open says N is
at most what was open: the cap for that server (kind 'smtp', target host:port) or sender (kind
'gmail', target the address) is lowered to it for every runner (multiplicative decrease), held
for LEARNED_CAP_HOLD seconds, then raised by one after every LEARNED_CAP_RAISE_AFTER successful
sends (additive increase) until it is back at the configured value (SMTP_MAX_CONNECTIONS,
GMAIL_MAX_CONCURRENT_PER_SENDER). The refused message never left: the scheduler gives its
attempt back (email_scheduler.classify), so learning costs no recipient anything.

The caps live in `learned_limits`. A process reads them at most every REFRESH seconds (the
runner's loop does, never a sending thread) and counts successes in memory; the runner writes
the counts with its outcomes. A refusal with nothing else open is not a concurrency limit (the
server is down or refusing this client) and teaches nothing.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from mailjobs.dao_mysql import Dao, DaoError
from mailjobs.settings import Settings

log = logging.getLogger("mailjobs.limits")

SMTP, GMAIL = "smtp", "gmail"
REFRESH = 2.0   # seconds a process keeps the caps it read


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


class LearnedLimits:
    """One per process: the caps in effect, the refusals that lower them, the successes that
    raise them."""

    def __init__(self, settings: Settings, dao: Dao, refresh: float = REFRESH) -> None:
        self.settings = settings
        self.dao = dao
        self.refresh_every = refresh
        self._lock = threading.Lock()
        self._caps: dict[tuple[str, str], int] = {}
        self._read_at = float("-inf")
        self._successes: Counter[tuple[str, str]] = Counter()

    def configured(self, kind: str) -> int:
        s = self.settings
        return max(1, s.smtp_max_connections if kind == SMTP else
                   s.gmail_max_concurrent_per_sender)

    def cap(self, kind: str, target: str) -> int:
        """The cap in effect: the configured value, or the learned one when it is lower."""
        configured = self.configured(kind)
        with self._lock:
            learned = self._caps.get((kind, target))
        return configured if learned is None else max(1, min(configured, learned))

    def refresh(self, force: bool = False) -> None:
        """Read the shared caps when the copy is REFRESH seconds old (the runner's loop)."""
        if not force and time.monotonic() - self._read_at < self.refresh_every:
            return
        rows = self.dao.learned_caps()
        with self._lock:
            self._caps = {(c.kind, c.target): c.cap for c in rows}
            self._read_at = time.monotonic()

    def refused(self, kind: str, target: str, others_open: int, reason: str) -> int:
        """A refusal while `others_open` connections or requests were open (over all runners
        for SMTP, in this process for Gmail). Lowers the shared cap to that, with one WARNING
        from the runner that lowered it; returns the cap in effect."""
        if others_open < 1:
            return self.cap(kind, target)
        configured = self.configured(kind)
        hold = self.settings.learned_cap_hold
        try:
            change = self.dao.lower_learned_cap(kind, target, others_open, configured,
                                                reason[:1000], hold)
        except DaoError as exc:   # learned later, by the next refusal
            log.warning("could not record the lowered cap of %s %s (%s)", kind, target, exc)
            change = None
        with self._lock:
            current = self._caps.get((kind, target), configured)
            learned = change[1] if change is not None else max(1, others_open)
            self._caps[(kind, target)] = min(current, learned) if change is None else learned
            self._successes.pop((kind, target), None)
        if change is not None and change[1] < change[0]:
            old, new = change
            what = "connection" if kind == SMTP else "concurrent request"
            log.warning("%s %s refused %s %d: cap lowered %d → %d for %s (%s)", kind, target,
                        what, others_open + 1, old, new, _minutes(hold), reason)
        return self.cap(kind, target)

    def succeeded(self, kind: str, target: str) -> None:
        """A send went through; counted only where a cap is below its configured value."""
        with self._lock:
            learned = self._caps.get((kind, target))
            if learned is not None and learned < self.configured(kind):
                self._successes[(kind, target)] += 1

    def flush(self) -> None:
        """Write the counted successes (the runner calls it with its outcomes); a cap past its
        hold goes up by one per LEARNED_CAP_RAISE_AFTER of them."""
        with self._lock:
            pending, self._successes = self._successes, Counter()
        for (kind, target), n in pending.items():
            try:
                change = self.dao.learned_cap_successes(
                    kind, target, n, self.configured(kind), self.settings.learned_cap_raise_after)
            except DaoError as exc:
                log.warning("could not record successes of %s %s (%s)", kind, target, exc)
                continue
            if change is not None:
                old, new = change
                with self._lock:
                    self._caps[(kind, target)] = new
                log.info("%s %s: cap raised %d → %d after %d successful sends", kind, target,
                         old, new, self.settings.learned_cap_raise_after)


class GateBusy(Exception):
    """No send slot of the sender came free in time."""


class Ticket:
    """One send inside the gate: `peak` is the most sends of its sender in flight at once while
    it was (itself included). At least that many were at Gmail when Gmail refused it, since a
    send enters the gate before its request and leaves after the answer."""

    def __init__(self, sender: str, peak: int) -> None:
        self.sender = sender
        self.peak = peak


class SenderGate:
    """Concurrent sends per Gmail sender over one process's sending threads: at most the cap in
    effect (GMAIL_MAX_CONCURRENT_PER_SENDER, or lower when learned). Across processes the
    learned cap is shared but each process holds to it on its own."""

    def __init__(self, limits: LearnedLimits) -> None:
        self.limits = limits
        self._cond = threading.Condition()
        self._in_flight: dict[str, list[Ticket]] = {}

    def enter(self, sender: str, wait: float) -> Ticket:
        """Take a slot of `sender`, waiting up to `wait` seconds. Raises GateBusy."""
        deadline = time.monotonic() + wait
        with self._cond:
            while len(self._in_flight.get(sender, ())) >= self.limits.cap(GMAIL, sender):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GateBusy(sender)
                # the cap may go up (a refresh) without a notify: look again now and then
                self._cond.wait(min(left, 0.5))
            tickets = self._in_flight.setdefault(sender, [])
            ticket = Ticket(sender, len(tickets) + 1)
            tickets.append(ticket)
            for t in tickets:
                t.peak = max(t.peak, len(tickets))
            return ticket

    def leave(self, ticket: Ticket) -> None:
        with self._cond:
            tickets = self._in_flight[ticket.sender]
            tickets.remove(ticket)
            if not tickets:
                del self._in_flight[ticket.sender]
            self._cond.notify_all()

    def in_flight(self, sender: str) -> int:
        with self._cond:
            return len(self._in_flight.get(sender, ()))
