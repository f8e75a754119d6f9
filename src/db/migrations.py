"""Numbered SQL migrations from sql/, applied once each and recorded in `schema_migrations`.

A file `sql/NNN_name.sql` is one migration; statements are separated by `;` at a line's end.
Applying takes a named lock (GET_LOCK), so two processes starting at once do not race; re-running
applies nothing. MySQL commits DDL implicitly, so a migration is recorded only after all of its
statements ran; a failed one is reported with the statement that failed.
"""
from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pymysql

from mailjobs.settings import DatabaseParams

log = logging.getLogger("mailjobs.migrate")
# src/sql links to the repository's sql/, and is package data in an installed wheel
SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
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
        conn = pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                               unix_socket=db.unix_socket, database=db.database,
                               connect_timeout=timeout, read_timeout=timeout, charset="utf8mb4")
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


def apply_migrations(db: DatabaseParams, sql_dir: Path = SQL_DIR) -> list[Migration]:
    """Apply what is pending; returns the migrations applied by this call."""
    conn = pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                           unix_socket=db.unix_socket, connect_timeout=10, charset="utf8mb4",
                           autocommit=True, init_command="SET time_zone = '+00:00'")
    applied: list[Migration] = []
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db.database}` "
                        "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute(f"USE `{db.database}`")
            cur.execute("SELECT GET_LOCK('mailjobs_migrate', 60)")
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
                    cur.execute("SELECT RELEASE_LOCK('mailjobs_migrate')")
                except pymysql.MySQLError:
                    # the connection is broken (a stop signal interrupted a read, the server
                    # went away): the lock is the session's and goes with it, and this must
                    # not hide why we are leaving (it turned a clean stop into exit 1)
                    pass
    finally:
        conn.close()
    return applied
