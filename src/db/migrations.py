"""Numbered SQL migrations from sql/, applied once each and recorded in `schema_migrations`.

A file `sql/NNN_name.sql` is one migration; statements are separated by `;` at a line's end.
Applying takes a lock row (`schema_migration_lock`), so two processes starting at once do not
race, on one server or through two nodes of a Galera cluster (where GET_LOCK is local to a node);
re-running applies nothing. MySQL commits DDL implicitly, so a migration is recorded only after all of its
statements ran; a failed one is reported with the statement that failed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql

from mailjobs.db import guard
from mailjobs.settings import DatabaseParams

log = logging.getLogger("mailjobs.migrate")
# src/sql links to the repository's sql/, and is package data in an installed wheel
SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
# The migration lock: how long a process waits for another's migrations, and after how long a
# holder on another node (whose connection cannot be checked from here) is presumed gone.
LOCK_WAIT = 60.0
LOCK_STALE = 600
_FILE = re.compile(r"^(\d{3,})_([\w-]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration's statement failed: which migration, which statement, the server's error."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def statements(self) -> list[str]:
        text = "\n".join(line for line in self.path.read_text().splitlines()
                         if not line.strip().startswith("--"))
        return [s.strip() for s in re.split(r";\s*$", text, flags=re.M) if s.strip()]

    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _FILE.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path))
    return found


def applied_versions(db: DatabaseParams, timeout: float = 10) -> set[int] | None:
    """The versions recorded in `schema_migrations`; None when the database or the table does
    not exist yet. Reads only: for the processes that must not migrate (worker, CLI)."""
    try:
        conn = guard.connect(db, database=db.database, connect_timeout=timeout,
                             read_timeout=timeout)
    except pymysql.err.OperationalError as exc:
        if exc.args and exc.args[0] == 1049:    # ER_BAD_DB_ERROR: unknown database
            return None
        raise
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations")
            return {row[0] for row in cur.fetchall()}
    except pymysql.err.ProgrammingError as exc:
        if exc.args and exc.args[0] == 1146:    # ER_NO_SUCH_TABLE
            return None
        raise
    finally:
        conn.close()


def _lock(cur: Any) -> str:
    """Take the migration lock row; returns this holder's name. A holder whose connection is
    gone (its node's processlist) or that took it over LOCK_STALE seconds ago is taken over; two
    takers at once on two Galera nodes: one fails certification (1213) and tries again."""
    cur.execute("CREATE TABLE IF NOT EXISTS schema_migration_lock (id TINYINT PRIMARY KEY, "
                "holder VARCHAR(255) NOT NULL, connection_id BIGINT NOT NULL, "
                "node VARCHAR(255) NOT NULL, taken_at DATETIME(6) NOT NULL) DEFAULT CHARSET=utf8mb4")
    holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            cur.execute("INSERT INTO schema_migration_lock (id, holder, connection_id, node, "
                        "taken_at) VALUES (1, %s, CONNECTION_ID(), "
                        "CONCAT(@@hostname, ':', @@port), NOW(6))", (holder,))
            return holder
        except pymysql.err.IntegrityError:
            pass                          # held
        except pymysql.err.OperationalError as exc:
            if not exc.args or exc.args[0] != 1213:
                raise                     # 1213: another node's taker won certification
        cur.execute("SELECT holder, connection_id, node, taken_at, "
                    "node = CONCAT(@@hostname, ':', @@port), "
                    "taken_at < NOW(6) - INTERVAL %s SECOND FROM schema_migration_lock "
                    "WHERE id = 1", (LOCK_STALE,))
        row = cur.fetchone()
        if row is None:
            continue                      # released between the two statements
        other, connection_id, node, taken_at, same_node, stale = row
        if same_node and not stale:
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s",
                        (connection_id,))
            stale = cur.fetchone()[0] == 0
        if stale:
            log.warning("taking over the migration lock of %s (connection %s on %s since %s): "
                        "it is gone", other, connection_id, node, taken_at)
            cur.execute("DELETE FROM schema_migration_lock WHERE id = 1 AND holder = %s", (other,))
            continue
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"migrations are locked by {other} (connection {connection_id} on {node}) since "
                f"{taken_at} UTC; if that process is gone, the lock is taken over "
                f"{LOCK_STALE} s after it was taken")
        time.sleep(0.2)


def apply_migrations(db: DatabaseParams, sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Apply what is pending; returns the migrations applied by this call."""
    conn = guard.connect(db, connect_timeout=10, autocommit=True)
    applied: list[Migration] = []
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db.database}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute(f"USE `{db.database}`")
            holder = _lock(cur)
            try:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, "
                    "name VARCHAR(255) NOT NULL, checksum CHAR(64) NOT NULL, "
                    "applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) "
                    "DEFAULT CHARSET=utf8mb4")
                cur.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in cur.fetchall()}
                for migration in discover(sql_dir):
                    if migration.version in done:
                        continue
                    log.info("applying migration %03d_%s", migration.version, migration.name)
                    for statement in migration.statements():
                        try:
                            cur.execute(statement)
                        except pymysql.MySQLError as exc:
                            raise MigrationError(
                                f"migration {migration.version:03d}_{migration.name} failed at "
                                f"`{' '.join(statement.split())[:200]}`: {exc}") from exc
                    cur.execute("INSERT INTO schema_migrations (version, name, checksum) "
                                "VALUES (%s, %s, %s)",
                                (migration.version, migration.name, migration.checksum()))
                    applied.append(migration)
            finally:
                try:
                    cur.execute("DELETE FROM schema_migration_lock WHERE id = 1 AND holder = %s",
                                (holder,))
                except pymysql.MySQLError:
                    # the connection is broken (a stop signal interrupted a read, the server
                    # went away): the next migrator sees this connection gone and takes the
                    # lock over; this must not hide why we are leaving (it turned a clean stop
                    # into exit 1)
                    pass
    finally:
        conn.close()
    return applied
