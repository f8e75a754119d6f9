"""Bounds on database time: the per-request deadline, the circuit breaker, and a pymysql
connection that obeys both. db/connector.py uses them; nothing else speaks to pymysql.

Where time went before (a frozen or partitioned server accepts the connection, or the packets
vanish, and nothing answers):
- pool wait: bounded by DB_POOL_TIMEOUT, now also by the deadline;
- connect: pymysql's `connect_timeout` bounds only the TCP/socket connect; the handshake that
  follows (greeting, authentication, init command) reads with `read_timeout`. Here the handshake
  is bounded by `connect_timeout` and the deadline;
- each statement (and BEGIN, COMMIT, ROLLBACK): `read_timeout`/`write_timeout`, now the smaller
  of those and what is left of the deadline, set before every command is sent;
- DBUtils' ping of a pooled connection on checkout: capped at DB_PING_TIMEOUT, and skipped when
  the connection answered within the last PING_IDLE seconds (a round trip saved per checkout);
- the retries of the checkout: stopped by the deadline and by an open circuit.

The deadline is per thread (`deadline(seconds)` around one API request). The breaker is per
process, shared by API threads and the runner: after a timeout or a refused connection it opens;
callers then fail at once until DB_BREAKER_INTERVAL has passed, when one caller at a time probes
(its checkout capped at DB_PING_TIMEOUT); the first success closes it.
"""
from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
from pymysql.connections import Connection

from mailjobs import defaults, metrics
from mailjobs.settings import DatabaseParams

log = logging.getLogger("mailjobs.db")

# A pooled connection that answered this recently is not pinged on checkout (seconds).
PING_IDLE = 1.0
# Smallest timeout handed to a socket once the deadline is spent: a rollback or close still
# gets a moment, a new statement is refused before it is sent (Dao._checkout).
MIN_BOUND = 0.05

# Of an API request's deadline, the seconds kept for writing the answer after the database work.
ANSWER_MARGIN = 0.25

_local = threading.local()


# --- the per-thread deadline ---------------------------------------------------------------
@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """All database work of this thread inside the block ends within `seconds` (None: no
    deadline). Nested deadlines keep the earlier end."""
    previous = getattr(_local, "ends", None)
    ends = None if seconds is None else time.monotonic() + seconds
    if previous is not None and (ends is None or previous < ends):
        ends = previous
    _local.ends = ends
    try:
        yield
    finally:
        _local.ends = previous


@contextmanager
def cap(seconds: float) -> Iterator[None]:
    """Every read and write inside the block waits at most `seconds` (a ping, a probe)."""
    previous = getattr(_local, "cap", None)
    _local.cap = seconds if previous is None else min(previous, seconds)
    try:
        yield
    finally:
        _local.cap = previous


def start_deadline(seconds: float) -> None:
    """Set this thread's deadline at an API request's start (end_deadline() clears it): its
    database work ends ANSWER_MARGIN before `seconds`, so the 503 itself is out in time too."""
    _local.ends = time.monotonic() + max(MIN_BOUND, seconds - ANSWER_MARGIN)


def end_deadline() -> None:
    _local.ends = None


def remaining() -> float | None:
    """Seconds left of this thread's deadline (may be <= 0), or None without one."""
    ends = getattr(_local, "ends", None)
    return None if ends is None else ends - time.monotonic()


def bound(configured: float | None) -> float | None:
    """The timeout for one wait: the configured one, the deadline's rest and the cap."""
    limits = [t for t in (configured, remaining(), getattr(_local, "cap", None)) if t is not None]
    return max(MIN_BOUND, min(limits)) if limits else None


# --- round trips (bench/README counts them) ---------------------------------------------------
class RoundTrips:
    """Commands sent to the server (each is one round trip), and connections opened."""

    def __init__(self) -> None:
        self.commands = 0
        self.connects = 0

    def snapshot(self) -> tuple[int, int]:
        return self.commands, self.connects


ROUND_TRIPS = RoundTrips()


# --- classifying failures ----------------------------------------------------------------------
def failure_kind(exc: BaseException) -> str:
    """timeout, refused or lost, from a pymysql error (or an OSError under it)."""
    text = " ".join(str(a) for a in getattr(exc, "args", ())).lower()
    if "timed out" in text or isinstance(exc, TimeoutError):
        return "timeout"
    code = exc.args[0] if getattr(exc, "args", None) and isinstance(exc.args[0], int) else None
    if code in (2002, 2003) or "refused" in text or "no such file" in text or \
            isinstance(exc, (ConnectionRefusedError, FileNotFoundError)):
        return "refused"
    return "lost"


# --- the circuit breaker -------------------------------------------------------------------------
class CircuitOpen(Exception):
    """Raised by Breaker.before() while the database is known to be unreachable."""

    def __init__(self, retry_after: float, cause: str) -> None:
        super().__init__(f"the database did not answer recently ({cause}); not trying again "
                         f"for {retry_after:.1f} s")
        self.retry_after = retry_after


class Breaker:
    """closed -> (timeout or refused) -> open -> (interval passed) one probe -> closed/open."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._open = False
        self._cause = ""
        self._opened_at = 0.0
        self._probe_until = 0.0   # a probe is in flight until then (one at a time)
        self.opened_count = 0
        metrics.DB_CIRCUIT_OPEN.set(0)

    @property
    def is_open(self) -> bool:
        return self._open

    def retry_after(self) -> float:
        """Seconds until the next probe may run (0 when closed)."""
        if not self._open:
            return 0.0
        return max(0.0, self._opened_at + self.interval - time.monotonic())

    def before(self, probe_seconds: float) -> bool:
        """Called before a database call. Returns True when this caller is the probe; raises
        CircuitOpen while the circuit is open and another caller probes (or it is too early)."""
        if not self.is_open:   # without the lock: the usual case
            return False
        with self._lock:
            if not self._open:
                return False
            now = time.monotonic()
            if now >= self._opened_at + self.interval and now >= self._probe_until:
                self._probe_until = now + probe_seconds + self.interval
                return True
            metrics.DB_CIRCUIT_REJECTED.inc()
            raise CircuitOpen(max(self.retry_after(), 0.5), self._cause)

    def success(self) -> None:
        if not self.is_open:   # without the lock: the usual case
            return
        with self._lock:
            if not self._open:
                return
            self._open = False
            self._probe_until = 0.0
            down = time.monotonic() - self._opened_at
        metrics.DB_CIRCUIT_OPEN.set(0)
        log.warning("database circuit closed: the database answers again (open %.1f s)", down)

    def failure(self, kind: str, detail: str) -> None:
        """A timeout or a refused connection opens the circuit (or keeps it open after a
        failed probe); a lost connection alone does not (a restart, a killed session)."""
        if kind not in ("timeout", "refused"):
            return
        with self._lock:
            self._opened_at = time.monotonic()
            self._probe_until = 0.0
            self._cause = f"{kind}: {detail}"[:300]
            if self._open:
                return
            self._open = True
            self.opened_count += 1
        metrics.DB_CIRCUIT_OPEN.set(1)
        metrics.DB_CIRCUIT_OPENED.inc()
        log.error("database circuit open after a %s (%s): database calls fail at once for "
                  "%.1f s, then one probe at a time checks the server", kind, detail[:300],
                  self.interval)


# --- several hosts ------------------------------------------------------------------------------
class Hosts:
    """Which of a DATABASE_URL's hosts (a Galera cluster's nodes) new connections go to, shared
    by a process' connections: the one that answered last first, then the others in the URL's
    order. DB_FAILBACK_AFTER seconds after it moved away from the first host, a new connection
    tries the first ones again (a node back from maintenance gets its share back)."""

    def __init__(self, addresses: tuple[tuple[str, int], ...], failback_after: float) -> None:
        self.addresses = addresses
        self.failback_after = failback_after
        self._current = 0
        self._moved_at = 0.0
        self._lock = threading.Lock()

    def order(self) -> list[tuple[str, int]]:
        with self._lock:
            start = self._current
            if start and time.monotonic() - self._moved_at >= self.failback_after:
                start = 0
        n = len(self.addresses)
        return [self.addresses[(start + i) % n] for i in range(n)]

    def answered(self, address: tuple[str, int]) -> None:
        index = self.addresses.index(address)
        with self._lock:
            if index == self._current:
                return
            was, self._current, self._moved_at = self._current, index, time.monotonic()
        metrics.DB_HOST_SWITCHES.inc()
        log.warning("database: new connections now go to %s:%s (was %s:%s)",
                    *address, *self.addresses[was])


_hosts: dict[tuple[tuple[str, int], ...], Hosts] = {}
_hosts_lock = threading.Lock()


def hosts_for(addresses: tuple[tuple[str, int], ...], failback_after: float) -> Hosts:
    """The process' one Hosts of this host list (the pool, the health check and the migrations
    learn from each other's connections)."""
    with _hosts_lock:
        if addresses not in _hosts:
            _hosts[addresses] = Hosts(addresses, failback_after)
        return _hosts[addresses]


def node_ready(conn: Connection) -> bool:
    """False for a Galera node that cannot take queries yet (joining, donor, or cut off from the
    cluster's primary component): such a node accepts connections, then answers every query
    with 'WSREP has not yet prepared node for application use' (1047). Not Galera: ready."""
    with conn.cursor() as cur:
        cur.execute("SHOW VARIABLES LIKE 'wsrep_on'")
        row = cur.fetchone()
        if row is None or str(row[1]).upper() != "ON":
            return True
        cur.execute("SHOW STATUS LIKE 'wsrep_ready'")
        row = cur.fetchone()
    return row is not None and str(row[1]).upper() == "ON"


# --- the connection ----------------------------------------------------------------------------
class BoundedConnection(Connection):
    """pymysql's Connection with every wait bounded by `bound()`: the handshake by
    connect_timeout (pymysql waits read_timeout there), each command by the smaller of its
    timeout and the deadline's rest, a ping by the cap. Reports ping timeouts to the breaker."""

    breaker: Breaker | None = None
    ping_timeout: float = 2.0
    # pymysql's own, which its type stubs do not declare
    _sock: socket.socket | None
    _force_close: Callable[[], None]
    _result: Any   # pymysql's MySQLResult of the last statement (has_next: more results follow)

    def __init__(self, *args: Any, hosts: Hosts | None = None, **kwargs: Any) -> None:
        self._configured = (kwargs.get("connect_timeout") or 10, kwargs.get("read_timeout"),
                            kwargs.get("write_timeout"))
        self._last_io = 0.0
        self._ended_by_commit = False
        self._hosts = hosts if hosts is not None and len(hosts.addresses) > 1 else None
        super().__init__(*args, **kwargs)

    def connect(self, sock: Any = None) -> None:
        if self._hosts is None or self.unix_socket or sock is not None:
            self._connect_once(sock)
            return
        # Several hosts: the first that answers and is ready, each try within connect_timeout
        # and all of them within the deadline.
        failure: Exception | None = None
        for address in self._hosts.order():
            self.host, self.port = address
            try:
                self._connect_once(None)
                if node_ready(self):
                    self._hosts.answered(address)
                    return
                failure = pymysql.err.OperationalError(
                    1047, f"{address[0]}:{address[1]} is not ready (not synced with the cluster)")
                self._force_close()
            except pymysql.err.Error as exc:
                if self._sock is not None:
                    self._force_close()
                failure = exc
                log.info("database host %s:%s did not answer (%s); trying the next one",
                         *address, exc.args[-1] if exc.args else exc)
        assert failure is not None
        raise failure

    def _connect_once(self, sock: Any) -> None:
        connect_timeout, read_timeout, write_timeout = self._configured
        handshake = bound(connect_timeout)
        self.connect_timeout = handshake
        self._read_timeout = self._write_timeout = handshake
        ROUND_TRIPS.connects += 1
        try:
            super().connect(sock)
        finally:
            self._read_timeout, self._write_timeout = read_timeout, write_timeout
        self._last_io = time.monotonic()

    def _execute_command(self, command: int, sql: Any) -> None:
        self._read_timeout = bound(self._configured[1])
        self._write_timeout = bound(self._configured[2])
        ROUND_TRIPS.commands += 1
        self._last_io = time.monotonic()
        self._ended_by_commit = False
        Connection._execute_command(self, command, sql)  # type: ignore[attr-defined]

    def ended_by_commit(self) -> None:
        """The statements just sent (several in one packet: CLIENT.MULTI_STATEMENTS) ended with
        a COMMIT, and every result was read: the next commit() costs no round trip. (Not the
        server's SERVER_STATUS_IN_TRANS: after a plain SELECT it is clear while the read view
        of REPEATABLE READ is still open.)"""
        self._ended_by_commit = self._result is None or not self._result.has_next

    def commit(self) -> None:
        if self._ended_by_commit:
            self._ended_by_commit = False
            return
        super().commit()

    def begin(self) -> None:
        """No BEGIN round trip: autocommit is off, so the first statement opens the transaction
        (InnoDB takes the snapshot at the first read either way), and the previous one always
        ended with COMMIT or ROLLBACK. DBUtils' begin() still marks the transaction open."""

    def ping(self, reconnect: bool = False) -> bool:  # type: ignore[override]
        """True when it answers (DBUtils reads the answer); a ping within PING_IDLE of the
        last answer is skipped."""
        if self._sock is not None and time.monotonic() - self._last_io < PING_IDLE and \
                not select.select([self._sock], [], [], 0)[0]:
            # it answered a moment ago and nothing is waiting on its socket (a server that
            # closed it, restarted or killed the session, leaves an EOF there): no round trip
            return True
        try:
            with cap(self.ping_timeout):
                super().ping(True) if reconnect else super().ping(False)
            return True
        except pymysql.err.Error as exc:
            if self.breaker is not None:
                self.breaker.failure(failure_kind(exc), f"ping: {exc.args[-1] if exc.args else exc}")
            raise


def connect(db: DatabaseParams, **kwargs: Any) -> BoundedConnection:
    """A connection outside the pool (start-up checks, migrations): to the first host of
    DATABASE_URL that answers, in UTC (and with wsrep_sync_wait when the URL asks for it)."""
    return BoundedConnection(host=db.host, port=db.port, user=db.user, password=db.password,
                             unix_socket=db.unix_socket, charset="utf8mb4",
                             init_command=db.init_command(),
                             hosts=hosts_for(db.addresses, defaults.DB_FAILBACK_AFTER), **kwargs)


def connector(breaker: Breaker, ping_timeout: float) -> Any:
    """A DB-API 'module' for DBUtils whose connect() makes BoundedConnections and refuses at
    once while the circuit is open (DBUtils reconnects inside its ping check; that must not
    wait on a server known to be unreachable)."""

    class Bound(BoundedConnection):
        pass

    Bound.breaker, Bound.ping_timeout = breaker, ping_timeout

    class Module:
        threadsafety = 1
        dbapi = pymysql

        @staticmethod
        def connect(*args: Any, **kwargs: Any) -> Connection:
            if breaker.is_open and not getattr(_local, "probing", False):
                raise CircuitOpen(max(breaker.retry_after(), 0.5), "not connecting")
            try:
                return Bound(*args, **kwargs)
            except pymysql.err.OperationalError as exc:
                breaker.failure(failure_kind(exc), f"connect: {exc.args[-1] if exc.args else exc}")
                raise

    return Module


def is_connected(pooled: Any) -> bool:
    """Whether the pymysql connection under DBUtils' wrappers still has its socket (a failed
    ping whose reconnect failed too leaves it closed, and DBUtils hands it out anyway)."""
    con = pooled
    while not isinstance(con, Connection) and getattr(con, "_con", None) is not None:
        con = con._con
    return isinstance(con, Connection) and getattr(con, "_sock", None) is not None


@contextmanager
def probing() -> Iterator[None]:
    """This thread is the breaker's probe: it may connect while the circuit is open."""
    _local.probing = True
    try:
        yield
    finally:
        _local.probing = False
