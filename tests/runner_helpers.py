"""Helpers for runner tests: run JobRunners in threads, wait for conditions, post jobs."""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pymysql

from mailjobs.dao_mysql import Dao
from mailjobs.job_runner import JobRunner
from mailjobs.settings import Settings
from mailjobs.transports import factory as transports


def fast(settings: Settings, **overrides) -> Settings:
    """Runner settings for tests: quick polls and flushes, no rate limit unless asked."""
    base = dict(poll_interval=0.05, heartbeat_interval=0.5, heartbeat_log_interval=0.5,
                record_flush_interval=0.05, retry_base_delay=0.05, retry_max_delay=0.2,
                sender_rate_per_minute=0, sender_daily_cap=0, lease_seconds=30,
                in_doubt_check_delay=0,                          # the in-doubt tests set it
                embedded_runner=False, bounce_check_interval=0,  # bounce tests turn it on
                send_as_check_interval=0,                        # send-as tests this
                purge_interval=0)                                 # and retention tests this
    base.update(overrides)
    return settings.with_overrides(**base)


@contextmanager
def running(settings: Settings, dao: Dao, count: int = 1, factory=None,
            kind: str = "worker") -> Iterator[list[JobRunner]]:
    factory = factory or transports.transport_factory(settings, dao)
    runners = [JobRunner(settings, dao, factory, kind=kind) for _ in range(count)]
    threads = [threading.Thread(target=r.run, daemon=True) for r in runners]
    for t in threads:
        t.start()
    try:
        yield runners
    finally:
        for r in runners:
            r.stop()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "runner did not stop within 30 s"


def wait_for(condition: Callable[[], object], timeout: float = 20.0, every: float = 0.05,
             message: str = "condition",
             on_timeout: Callable[[], str] | None = None) -> object:
    """Poll until condition() is truthy (returns it) or fail after timeout; on_timeout adds
    details to the failure message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {message}{extra}")


def job_status(dao: Dao, job_id: int) -> str:
    return dao.job(job_id).status


def wait_job_done(dao: Dao, job_id: int, timeout: float = 30.0) -> str:
    final = ("completed", "completed_with_errors", "failed")
    return wait_for(lambda: job_status(dao, job_id) in final and job_status(dao, job_id),
                    timeout, message=f"job {job_id} to finish")


def recipients(dao: Dao, job_id: int):
    return dao.recipients_page(job_id, None, 0, 100_000)


# The sender the tests' jobs use (test_api_enqueue.body) and the fake Gmail's account.
SENDER = "ops@example.com"


def count_rows(dao: Dao, table: str) -> int:
    with dao.transaction() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        return int(cur.fetchone()[0])


def raw_connection(dao: Dao) -> pymysql.connections.Connection:
    """A connection of its own, outside the pool (another runner holding locks, say)."""
    p = dao.params
    return pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password,
                           database=p.database, unix_socket=p.unix_socket, autocommit=False)


def innodb_deadlocks(dao: Dao) -> int:
    """The server's count of deadlocks so far (SHOW GLOBAL STATUS)."""
    with dao.transaction() as cur:
        cur.execute("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")
        return int(cur.fetchone()[1])


def lock_waits(dao: Dao) -> int:
    """Transactions waiting for a row lock right now (InnoDB's own view). InnoDB refreshes
    the INNODB_TRX table only when it was last read over 0.1 s ago: poll slower than that."""
    with dao.transaction() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.INNODB_TRX "
                    "WHERE trx_state = 'LOCK WAIT'")
        return int(cur.fetchone()[0])


def catches_sigterm(pid: int) -> bool:
    """/proc says the process catches SIGTERM: mailjobs' first line (entry.install) has run.
    Before that the Python interpreter itself is still starting, and SIGTERM's default action
    would end it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(line for line in f if line.startswith("SigCgt:"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def wait_until_stoppable(proc, timeout: float = 30.0) -> None:
    """Wait (by condition, not by a sleep) until a mailjobs process handles stop signals, or
    has already exited."""
    wait_for(lambda: proc.poll() is not None or catches_sigterm(proc.pid), timeout, 0.001,
             f"process {proc.pid} to install its signal handlers")
