"""The connector: the only code that speaks to MySQL (procrastinate's connector layer).

- Statements live in `queries.sql`, loaded by name (procrastinate's habit), run with
  `execute/one/all(name, args)`; rows come back BY COLUMN NAME (`Row`: a dict built from the
  cursor's description), so a SELECT's column names (aliases where it computes one) are what
  the DAO maps into the records dataclasses.
- A DBUtils `PooledDB` over pymysql with connect/read/write timeouts, `ping` on checkout and
  `reset` on return. DBUtils' own `blocking=True` waits forever for a free connection, so the pool
  is non-blocking and a semaphore bounds the wait to `DB_POOL_TIMEOUT` seconds.
- Obtaining a working connection is retried with bounded exponential backoff (tenacity), each
  retry logged with its attempt and wait, only after a lost connection and only while the
  request's deadline allows. A statement is never re-run blindly: a write whose connection broke
  mid-way may have committed, so that error goes up to the caller; a whole transaction InnoDB
  rolled back (a deadlock victim, a lock wait timeout) is, by `rerun_on_conflict`.
- Every wait is bounded by `db.guard`: the request's deadline (DB_REQUEST_DEADLINE, set by the
  API per request), the handshake by DB_CONNECT_TIMEOUT, pings by DB_PING_TIMEOUT; and the
  process's circuit breaker fails calls at once while the database is known to be unreachable.
- pymysql errors are translated here, at one edge, into `DatabaseUnavailable` (server down, lost,
  timed out, pool exhausted) and `DuplicateKey`; no other module sees pymysql's exceptions.
"""
from __future__ import annotations

import functools
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import pymysql
from dbutils.pooled_db import PooledDB, TooManyConnections
from pymysql.constants import CLIENT
from pymysql.cursors import Cursor
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from mailjobs import defaults, metrics
from mailjobs.db import guard as db_guard
from mailjobs.settings import DatabaseParams, Settings

log = logging.getLogger("mailjobs.db")
T = TypeVar("T")
S = TypeVar("S")
P = ParamSpec("P")
# A row by column name: the SELECT's names (aliases where it computes a value).
Row = dict[str, Any]
# A statement's arguments: positional (%s) or by name (%(name)s)
Args = Sequence[Any] | Mapping[str, Any] | None

QUERIES_FILE = Path(__file__).parent.parent / "queries.sql"
# Server-side errors that mean "not reachable now", not "your statement is wrong".
_UNAVAILABLE_CODES = {1040, 1053, 2002, 2003, 2006, 2013, 2055}


class DaoError(Exception):
    """Base class of the errors the connector and the DAO raise."""


class DatabaseUnavailable(DaoError):
    """The database cannot be reached or did not answer in time. Retry later.

    `kind`: timeout, refused, lost (a connection broke), pool (no free pooled connection),
    deadline (the request's DB_REQUEST_DEADLINE is spent), circuit (failed at once: the circuit
    breaker is open), conflict (TransactionConflict). `retry_after`: seconds a client should wait.
    """

    def __init__(self, message: str, kind: str = "lost", retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class TransactionConflict(DatabaseUnavailable):
    """InnoDB chose this transaction as a deadlock victim (1213) or it waited too long for a
    row lock (1205). The whole transaction was rolled back: re-running all of it is safe."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="conflict", retry_after=1.0)


class DuplicateKey(DaoError):
    """A unique key already holds this value."""


def load_queries(path: Path = QUERIES_FILE) -> dict[str, str]:
    """Parse `-- name: x` blocks into {name: sql}."""
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", path.read_text(), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        if name.strip() in queries:   # the later one would silently replace the first
            raise ValueError(f"{path}: the statement name {name.strip()!r} is used twice")
        queries[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return queries


def translate(exc: BaseException) -> DaoError | None:
    """The connector's own error for a driver's (None: not one of the database's state)."""
    if isinstance(exc, TooManyConnections):
        return DatabaseUnavailable("no free database connection in the pool", kind="pool")
    if isinstance(exc, db_guard.CircuitOpen):
        return DatabaseUnavailable(str(exc), kind="circuit", retry_after=exc.retry_after)
    if isinstance(exc, pymysql.err.IntegrityError) and exc.args and exc.args[0] == 1062:
        return DuplicateKey(str(exc.args[1]))
    if isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code in (1205, 1213):
            return TransactionConflict(f"transaction conflict ({code}): {exc.args[-1]}")
        if code is None or code in _UNAVAILABLE_CODES or isinstance(exc, pymysql.err.InterfaceError):
            kind = db_guard.failure_kind(exc)
            return DatabaseUnavailable(
                f"database unavailable ({code}, {kind}): {exc.args[-1] if exc.args else exc}",
                kind=kind)
    return None


def rerun_on_conflict(method: Callable[Concatenate[S, P], T], label: str | None = None
                      ) -> Callable[Concatenate[S, P], T]:
    """For a DAO method that is one transaction (plus idempotent steps before it): when InnoDB
    rolls it back as a deadlock victim or after a lock wait timeout, run it again, up to
    CONFLICT_RETRIES times after a short random pause, before the error goes up. The runners'
    claims and writes collide with each other; a collision is not an outage."""
    @functools.wraps(method)
    def rerun(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(1, defaults.CONFLICT_RETRIES + 1):
            try:
                return method(self, *args, **kwargs)
            except TransactionConflict as exc:
                if attempt == defaults.CONFLICT_RETRIES:
                    raise
                metrics.DB_CONFLICTS.labels(label or method.__name__).inc()
                log.info("%s lost a lock conflict (%s); running it again (attempt %d)",
                         label or method.__name__, exc, attempt + 1)
                time.sleep(random.uniform(0.005, 0.05) * attempt)
        raise AssertionError("unreachable")
    return rerun


def rerun_on_conflict_as(label: str) -> Callable[[Callable[Concatenate[S, P], T]],
                                                 Callable[Concatenate[S, P], T]]:
    """rerun_on_conflict with its own label in logs and metrics (several methods, one name)."""
    def wrap(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
        return rerun_on_conflict(method, label)
    return wrap


def _retryable(exc: BaseException) -> bool:
    """Only a lost connection is worth another checkout at once: a timeout or a refusal opened
    the circuit, a full pool was waited for already, a spent deadline is spent."""
    return isinstance(exc, DatabaseUnavailable) and exc.kind == "lost"


def _within_deadline(attempts: int) -> Callable[[RetryCallState], bool]:
    def stop(state: RetryCallState) -> bool:
        left = db_guard.remaining()
        return state.attempt_number >= attempts or (left is not None and
                                                    left <= defaults.DB_RETRY_MAX)
    return stop


def _log_retry(state: RetryCallState) -> None:
    wait = state.next_action.sleep if state.next_action else 0
    log.warning("database connection failed (attempt %d): %s; retrying in %.2fs",
                state.attempt_number, state.outcome.exception() if state.outcome else "?", wait)


class Connector:
    """The pool and everything around a statement: one per process, shared by its threads."""

    def __init__(self, settings: Settings, params: DatabaseParams | None = None) -> None:
        self.settings = settings
        self.params = params or settings.db
        self.queries = load_queries()
        self._slots = threading.BoundedSemaphore(settings.db_pool_size)
        self._in_use = 0
        self._in_use_lock = threading.Lock()
        self.breaker = db_guard.Breaker(settings.db_breaker_interval)
        # One for every checkout (its state is per thread): a Retrying made per call is a
        # cycle of a dozen objects left to the garbage collector, two per transaction.
        self._retrying = Retrying(
            stop=_within_deadline(max(1, settings.db_retry_attempts)),
            wait=wait_exponential_jitter(multiplier=defaults.DB_RETRY_BASE, max=defaults.DB_RETRY_MAX),
            retry=retry_if_exception(_retryable), before_sleep=_log_retry, reraise=True)
        self._health_lock = threading.Lock()
        self._health_conn: db_guard.BoundedConnection | None = None
        # reset=False: a connection going back is rolled back only when its transaction is
        # still open (transaction() always commits or rolls back: one round trip saved).
        self._pool = PooledDB(
            creator=db_guard.connector(self.breaker, settings.db_ping_timeout), mincached=0,
            maxcached=settings.db_pool_size, maxconnections=settings.db_pool_size,
            blocking=False, ping=1, reset=False,
            host=self.params.host, port=self.params.port, user=self.params.user,
            password=self.params.password, database=self.params.database,
            unix_socket=self.params.unix_socket, charset="utf8mb4",
            connect_timeout=settings.db_connect_timeout, read_timeout=settings.db_read_timeout,
            write_timeout=settings.db_write_timeout, autocommit=False,
            init_command=self.params.init_command(),
            # several statements in one packet (Dao._script): one round trip for a job's store
            client_flag=CLIENT.MULTI_STATEMENTS,
            hosts=db_guard.hosts_for(self.params.addresses, settings.db_failback_after),
        )


    # --- connections ----------------------------------------------------------------------
    @property
    def connections_in_use(self) -> int:
        return self._in_use

    def _checkout(self, probe: bool = False) -> Any:
        """A pooled connection with its transaction begun (no round trip: see
        BoundedConnection.begin); a connection idle for a moment was pinged by DBUtils."""
        left = db_guard.remaining()
        if left is not None and left <= 0:
            raise DatabaseUnavailable("the request's database deadline "
                                      f"({self.settings.db_request_deadline:g} s) is spent",
                                      kind="deadline")
        started = time.monotonic()
        wait = db_guard.bound(self.settings.db_pool_timeout)
        acquired = self._slots.acquire(timeout=wait)
        metrics.POOL_WAIT_SECONDS.observe(time.monotonic() - started)
        if not acquired:
            raise DatabaseUnavailable(
                f"no free database connection within {wait:.1f}s "
                f"(pool size {self.settings.db_pool_size})", kind="pool", retry_after=1.0)
        conn = None
        try:
            conn = self._pool.connection()
            if not db_guard.is_connected(conn):   # its ping and its reconnect failed
                raise DatabaseUnavailable(
                    "no working database connection (its ping and reconnect failed)",
                    kind="circuit" if self.breaker.is_open else "lost")
            # An explicit begin() tells DBUtils a transaction is open: without it, DBUtils
            # answers a failed statement (a deadlock, 1213) by silently re-running just that
            # statement in a new transaction, losing the ones before it.
            conn.begin()
            if probe:   # the breaker's probe: one real round trip, within the cap
                cur = conn.cursor()
                cur.execute(self.queries["ping"])
                cur.fetchall()
                cur.close()
        except Exception as exc:
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    log.debug("closing a broken connection failed", exc_info=True)
            self._slots.release()
            if isinstance(exc, DaoError):
                raise
            raise (translate(exc) or exc) from exc
        with self._in_use_lock:
            self._in_use += 1
        metrics.POOL_IN_USE.inc()
        return conn

    def _release(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception:  # a broken connection is dropped by the pool; nothing to recover
            log.debug("closing a pooled connection failed", exc_info=True)
        finally:
            with self._in_use_lock:
                self._in_use -= 1
            metrics.POOL_IN_USE.dec()
            self._slots.release()

    def _acquire(self) -> Any:
        """A connection, through the circuit breaker: while it is open this fails at once,
        unless this caller is the probe (its checkout then waits at most DB_PING_TIMEOUT)."""
        try:
            probe = self.breaker.before(self.settings.db_ping_timeout)
        except db_guard.CircuitOpen as exc:
            raise DatabaseUnavailable(str(exc), kind="circuit",
                                      retry_after=exc.retry_after) from None
        try:
            if not probe:
                return self._retrying(self._checkout)
            with db_guard.probing(), db_guard.cap(self.settings.db_ping_timeout):
                conn = self._checkout(probe=True)
            self.breaker.success()
            return conn
        except DatabaseUnavailable as exc:
            self._failed(exc)
            raise

    def _failed(self, exc: DatabaseUnavailable) -> None:
        self.breaker.failure(exc.kind, str(exc))
        if self.breaker.is_open:
            exc.retry_after = max(1.0, self.breaker.retry_after())

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A cursor in one transaction: committed on success, rolled back on error."""
        conn = self._acquire()
        try:
            cur = conn.cursor()
            try:
                yield cur
                conn.commit()
            except BaseException:
                try:
                    conn.rollback()
                except Exception:
                    log.debug("rollback failed", exc_info=True)
                raise
            finally:
                cur.close()
        except DaoError:
            raise
        except Exception as exc:
            translated = translate(exc)
            if translated is None:
                raise
            if isinstance(translated, DatabaseUnavailable):
                self._failed(translated)
            try:
                raise translated from exc
            finally:   # this frame, in the error's traceback, must not hold the error itself:
                del translated   # a cycle that kept the caller's rows until a full collection
        finally:
            self._release(conn)

    # --- statements by name ------------------------------------------------------------------
    def run(self, cur: Cursor, name: str, args: Args = None, **parts: str) -> int:
        """Run the named statement in the caller's transaction; `parts` fill its `{…}` slots
        (placeholder lists: `ids=placeholders(n)`). Returns the rows it changed or found."""
        sql = self.queries[name]
        changed: int = cur.execute(sql.format(**parts) if parts else sql, args)
        return changed

    def insert_unique(self, cur: Cursor, name: str, args: Args = None) -> bool:
        """Run a named INSERT in the caller's transaction; False when a unique key holds its
        value already (nothing was written, the transaction goes on)."""
        try:
            self.run(cur, name, args)
        except pymysql.err.IntegrityError as exc:
            if exc.args and exc.args[0] == 1062:
                return False
            raise
        return True

    def execute(self, name: str, args: Args = None, **parts: str) -> int:
        """The named statement in a transaction of its own; the rows it changed."""
        with self.transaction() as cur:
            return self.run(cur, name, args, **parts)

    def one(self, name: str, args: Args = None, **parts: str) -> Row | None:
        """The first row of the named statement, by column name (None: no row)."""
        with self.transaction() as cur:
            self.run(cur, name, args, **parts)
            return fetch_one(cur)

    def all(self, name: str, args: Args = None, **parts: str) -> list[Row]:
        """Every row of the named statement, by column name."""
        with self.transaction() as cur:
            self.run(cur, name, args, **parts)
            return fetch_all(cur)

    def value(self, name: str, args: Args = None, **parts: str) -> Any:
        """The one value a statement selects (COUNT, SUM, NOW): None when no row."""
        with self.transaction() as cur:
            self.run(cur, name, args, **parts)
            return fetch_value(cur)

    def health(self, timeout: float, max_age: float) -> tuple[str, int | None, str]:
        """(database, live runners, detail) for /healthz, within `timeout` seconds whatever the
        server does: "ok", "timeout" or "refused" (or "error"). Uses a connection of its own,
        outside the pool, so it never waits behind stuck request threads; feeds the breaker."""
        if not self._health_lock.acquire(timeout=timeout):
            return "timeout", None, "another health check is still waiting for the database"
        try:
            with db_guard.deadline(timeout):
                kept = self._health_conn is not None
                try:
                    live = self._health_query(max_age, timeout)
                except pymysql.err.Error as exc:
                    # a kept connection the server closed (a restart): once more, a new one
                    if not kept or db_guard.failure_kind(exc) != "lost":
                        raise
                    self._drop_health_conn()
                    live = self._health_query(max_age, timeout)
            self.breaker.success()
            return "ok", live, ""
        except pymysql.err.Error as exc:
            self._drop_health_conn()
            kind = db_guard.failure_kind(exc)
            self.breaker.failure(kind, f"health check: {exc.args[-1] if exc.args else exc}")
            return (kind if kind in ("timeout", "refused") else "error"), None, str(exc)[:300]
        finally:
            self._health_lock.release()

    def _health_query(self, max_age: float, timeout: float) -> int:
        conn = self._health_conn
        if conn is None:
            conn = self._health_conn = db_guard.connect(
                self.params, database=self.params.database, connect_timeout=timeout,
                read_timeout=timeout, write_timeout=timeout, autocommit=True)
        with conn.cursor() as cur:
            cur.execute(self.queries["live_runners"], (int(max_age * 1_000_000),))
            return len(cur.fetchall())

    def _drop_health_conn(self) -> None:
        conn, self._health_conn = self._health_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:   # a broken connection: nothing to close cleanly
                log.debug("closing the health connection failed", exc_info=True)

    def close(self) -> None:
        self._pool.close()



def fetch_one(cur: Cursor) -> Row | None:
    """The cursor's next row by column name."""
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row, strict=True))


def fetch_all(cur: Cursor) -> list[Row]:
    """The cursor's remaining rows by column name."""
    rows = cur.fetchall()
    if not rows:
        return []
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in rows]


def fetch_value(cur: Cursor) -> Any:
    """The first column of the cursor's next row (None: no row)."""
    row = cur.fetchone()
    return None if row is None else row[0]


def placeholders(n: int) -> str:
    """`%s, %s, …` for a `{ids}` slot of n values."""
    return ", ".join(["%s"] * n)
