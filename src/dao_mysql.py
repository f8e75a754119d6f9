"""All SQL of mailjobs and the connection pool. The only module that speaks to MySQL.

- Statements live in `queries.sql`, loaded by name (procrastinate's habit).
- A DBUtils `PooledDB` over pymysql with connect/read/write timeouts, `ping` on checkout and
  `reset` on return. DBUtils' own `blocking=True` waits forever for a free connection, so the pool
  is non-blocking and a semaphore bounds the wait to `DB_POOL_TIMEOUT` seconds.
- Obtaining a working connection is retried with bounded exponential backoff (tenacity), each
  retry logged with its attempt and wait. A statement is never re-run blindly: a write whose
  connection broke mid-way may have committed, so that error goes up to the caller.
- pymysql errors are translated here, at one edge, into `DatabaseUnavailable` (server down, lost,
  timed out, pool exhausted) and `DuplicateKey`; no other module sees pymysql's exceptions.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from datetime import datetime, timezone
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pymysql
from dbutils.pooled_db import PooledDB, TooManyConnections
from tenacity import (RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt,
                      wait_exponential_jitter)

import defaults
from records import ApiKey, Job, NewJob, NewRecipient, Recipient
from settings import DatabaseParams, Settings

log = logging.getLogger("mailjobs.db")

QUERIES_FILE = Path(__file__).with_name("queries.sql")
# Server-side errors that mean "not reachable now", not "your statement is wrong".
_UNAVAILABLE_CODES = {1040, 1053, 1205, 1213, 2002, 2003, 2006, 2013, 2055}


class DaoError(Exception):
    """Base class of the errors this module raises."""


class DatabaseUnavailable(DaoError):
    """The database cannot be reached or did not answer in time. Retry later."""


class DuplicateKey(DaoError):
    """A unique key already holds this value."""


def load_queries(path: Path = QUERIES_FILE) -> dict[str, str]:
    """Parse `-- name: x` blocks into {name: sql}."""
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", path.read_text(), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        queries[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return queries


def _translate(exc: Exception) -> DaoError | None:
    if isinstance(exc, TooManyConnections):
        return DatabaseUnavailable("no free database connection in the pool")
    if isinstance(exc, pymysql.err.IntegrityError) and exc.args and exc.args[0] == 1062:
        return DuplicateKey(str(exc.args[1]))
    if isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if code is None or code in _UNAVAILABLE_CODES or isinstance(exc, pymysql.err.InterfaceError):
            return DatabaseUnavailable(f"database unavailable ({code}): {exc.args[-1] if exc.args else exc}")
    return None


def _log_retry(state: RetryCallState) -> None:
    wait = state.next_action.sleep if state.next_action else 0
    log.warning("database connection failed (attempt %d): %s; retrying in %.2fs",
                state.attempt_number, state.outcome.exception() if state.outcome else "?", wait)


class Dao:
    """The data access object: one per process, shared by its threads."""

    def __init__(self, settings: Settings, params: DatabaseParams | None = None) -> None:
        self.settings = settings
        self.params = params or settings.db
        self.queries = load_queries()
        self._slots = threading.BoundedSemaphore(settings.db_pool_size)
        self._in_use = 0
        self._in_use_lock = threading.Lock()
        self._pool = PooledDB(
            creator=pymysql, mincached=0, maxcached=settings.db_pool_size,
            maxconnections=settings.db_pool_size, blocking=False, ping=1, reset=True,
            host=self.params.host, port=self.params.port, user=self.params.user,
            password=self.params.password, database=self.params.database,
            unix_socket=self.params.unix_socket, charset="utf8mb4",
            connect_timeout=settings.db_connect_timeout, read_timeout=settings.db_read_timeout,
            write_timeout=settings.db_write_timeout, autocommit=False,
            init_command="SET time_zone = '+00:00'",
        )

    # --- connections ----------------------------------------------------------------------
    @property
    def connections_in_use(self) -> int:
        return self._in_use

    def _checkout(self) -> Any:
        if not self._slots.acquire(timeout=self.settings.db_pool_timeout):
            raise DatabaseUnavailable(
                f"no free database connection within {self.settings.db_pool_timeout}s "
                f"(pool size {self.settings.db_pool_size})")
        try:
            conn = self._pool.connection()
        except Exception as exc:
            self._slots.release()
            raise (_translate(exc) or exc) from exc
        with self._in_use_lock:
            self._in_use += 1
        return conn

    def _release(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception:  # a broken connection is dropped by the pool; nothing to recover
            log.debug("closing a pooled connection failed", exc_info=True)
        finally:
            with self._in_use_lock:
                self._in_use -= 1
            self._slots.release()

    def _acquire(self) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.settings.db_retry_attempts)),
            wait=wait_exponential_jitter(multiplier=defaults.DB_RETRY_BASE, max=defaults.DB_RETRY_MAX),
            retry=retry_if_exception_type(DatabaseUnavailable), before_sleep=_log_retry,
            reraise=True)
        return retrying(self._checkout)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
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
            translated = _translate(exc)
            if translated is None:
                raise
            raise translated from exc
        finally:
            self._release(conn)

    def _run(self, cur: Any, name: str, args: Any = None) -> int:
        return cur.execute(self.queries[name], args)

    def _one(self, name: str, args: Any = None) -> tuple | None:
        with self.transaction() as cur:
            self._run(cur, name, args)
            return cur.fetchone()

    def _all(self, name: str, args: Any = None) -> list[tuple]:
        with self.transaction() as cur:
            self._run(cur, name, args)
            return list(cur.fetchall())

    def ping(self) -> None:
        self._one("ping")

    def close(self) -> None:
        self._pool.close()

    # --- API keys -------------------------------------------------------------------------
    def insert_api_key(self, name: str, prefix: str, secret_hash: str,
                       allowed_senders: Sequence[str], is_operator: bool) -> int:
        with self.transaction() as cur:
            self._run(cur, "insert_api_key",
                      (name, prefix, secret_hash, json.dumps(list(allowed_senders)), is_operator))
            return int(cur.lastrowid)

    def api_key_by_prefix(self, prefix: str) -> ApiKey | None:
        row = self._one("api_key_by_prefix", (prefix,))
        return _api_key(row) if row else None

    def api_keys(self) -> list[ApiKey]:
        return [_api_key(row) for row in self._all("api_keys_all")]

    def touch_api_key(self, key_id: int) -> None:
        with self.transaction() as cur:
            self._run(cur, "touch_api_key", (key_id,))

    def revoke_api_key(self, id_or_prefix: str) -> bool:
        with self.transaction() as cur:
            return self._run(cur, "revoke_api_key", (id_or_prefix, id_or_prefix)) > 0

    # --- jobs -----------------------------------------------------------------------------
    def create_job(self, job: NewJob, recipients: Sequence[NewRecipient]) -> int:
        """Store a job and all its recipients in one transaction; returns the job id.

        Raises DuplicateKey when the (api key, idempotency key) pair exists already.
        """
        batch = defaults.INSERT_BATCH
        with self.transaction() as cur:
            self._run(cur, "insert_job", (
                job.api_key_id, job.sender_email, job.from_name, job.reply_to,
                job.subject_template, job.html_template, job.text_template,
                json.dumps(job.variables), job.total, job.duplicates_removed,
                job.idempotency_key, job.request_hash))
            job_id = int(cur.lastrowid)
            sql = self.queries["insert_recipients"]
            for start in range(0, len(recipients), batch):
                cur.executemany(sql, [
                    (job_id, r.to_email, r.name,
                     json.dumps(r.variables) if r.variables is not None else None)
                    for r in recipients[start:start + batch]])
            return job_id

    def job(self, job_id: int, with_counts: bool = False) -> Job | None:
        row = self._one("job_by_id", (job_id,))
        if row is None:
            return None
        return _job(row, self.recipient_counts(job_id) if with_counts else {})

    def job_by_idempotency_key(self, api_key_id: int, key: str) -> Job | None:
        row = self._one("job_by_idempotency_key", (api_key_id, key))
        return _job(row) if row else None

    def jobs_page(self, api_key_id: int | None, before: int | None, limit: int,
                  status: str | None = None) -> list[Job]:
        rows = self._all("jobs_page", {"api_key_id": api_key_id, "status": status,
                                       "before": before or 2**63, "limit": limit})
        return [_job(row) for row in rows]

    def recipient_counts(self, job_id: int) -> dict[str, int]:
        return {status: int(n) for status, n in self._all("recipient_counts", (job_id,))}

    def recipients_page(self, job_id: int, status: str | None, after: int,
                        limit: int) -> list[Recipient]:
        args = {"job_id": job_id, "status": status, "after": after, "limit": limit}
        name = "recipients_page_by_status" if status else "recipients_page"
        return [_recipient(row) for row in self._all(name, args)]


def _utc(row: tuple) -> tuple:
    """MySQL DATETIMEs are stored in UTC (session time_zone +00:00); make that explicit."""
    return tuple(v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) else v for v in row)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _api_key(row: tuple) -> ApiKey:
    row = _utc(row)
    return ApiKey(int(row[0]), row[1], row[2], row[3], _json(row[4]) or [], bool(row[5]),
                  row[6], row[7], row[8])


def _job(row: tuple, counts: dict[str, int] | None = None) -> Job:
    row = _utc(row)
    return Job(int(row[0]), row[1], int(row[2]), row[3], row[4], row[5], row[6], row[7], row[8],
               _json(row[9]) or {}, row[10], row[11], int(row[12]), int(row[13]), row[14],
               row[15], row[16], row[17], row[18], row[19], counts or {})


def _recipient(row: tuple) -> Recipient:
    row = _utc(row)
    return Recipient(int(row[0]), int(row[1]), row[2], row[3], _json(row[4]), row[5], int(row[6]),
                     *row[7:])
