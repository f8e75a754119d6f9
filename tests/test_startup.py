"""Start-up tells the truth: an unreachable database is retried (each try logged), then one
sentence and exit 1; a bad DATABASE_URL is one sentence naming it; the port is bound before
"ready" is printed; only `migrate` and `serve` change the schema (the worker and the other
commands refuse a schema behind or ahead of the code); one project-local MariaDB is shared by the
processes of a checkout and stopped by the last one; `mailjobs --version`."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import pymysql
import pytest

from mailjobs.db.local_mariadb import LocalMariaDB
from mailjobs.db.migrations import apply_migrations, discover
from mailjobs.settings import DatabaseParams

ROOT = Path(__file__).resolve().parents[1]
MAILJOBS = ROOT / ".venv" / "bin" / "mailjobs"


def mailjobs(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MAIL_TRANSPORT": "null", **env}
    return subprocess.run([str(MAILJOBS), *args], env=full_env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def refused_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_sentence(done: subprocess.CompletedProcess) -> str:
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    return errors[0]


def test_an_unreachable_database_is_retried_then_one_sentence_and_exit_1():
    url = f"mysql://root@127.0.0.1:{refused_port()}/x"
    done = mailjobs("worker", DATABASE_URL=url, STARTUP_DB_WAIT="2")
    assert done.returncode == 1
    line = one_sentence(done)
    assert "cannot reach the database at 127.0.0.1:" in line and "attempts" in line, line
    retries = [x for x in done.stderr.splitlines() if "not reachable" in x and "attempt" in x]
    assert len(retries) >= 2, done.stderr


def test_an_operators_command_tries_the_database_once():
    url = f"mysql://root@127.0.0.1:{refused_port()}/x"
    done = mailjobs("jobs", DATABASE_URL=url, STARTUP_DB_WAIT="30", timeout=20)
    assert done.returncode == 1
    assert "cannot reach the database" in one_sentence(done)
    assert "not reachable" not in done.stderr          # no retry loop


@pytest.mark.parametrize("url, says", [
    ("postgres://u@db/x", "DATABASE_URL must be a MySQL/MariaDB URL"),
    ("mysql://u:secret@db:notaport/x", "DATABASE_URL has an invalid port"),
])
def test_a_bad_database_url_is_one_sentence_naming_it(url, says):
    done = mailjobs("worker", DATABASE_URL=url)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert says in out and "Traceback" not in out and "secret" not in out, out


def test_a_bad_number_names_the_variable():
    done = mailjobs("jobs", DATABASE_URL="mysql://root@127.0.0.1/x", POLL_INTERVAL="fast")
    assert done.returncode != 0
    assert "POLL_INTERVAL must be a number, got 'fast'" in done.stderr, done.stderr


def test_a_port_in_use_is_refused_before_ready_is_printed(database, dao):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = mailjobs("serve", DATABASE_URL=database.url, PORT=str(port),
                        MAIL_TRANSPORT="outbox")
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in one_sentence(done)
    assert "ready on" not in done.stderr


@pytest.fixture()
def other_db(database, dao, tmp_path):
    """A second database on the test server migrated up to the release before this one (all
    of sql/ but the newest migration), its URL, and a raw connection to it."""
    params = DatabaseParams.from_url(database.url)
    name = "mailjobs_schema_check"
    url = database.url.replace(f"/{params.database}?", f"/{name}?")
    conn = pymysql.connect(unix_socket=params.unix_socket, user=params.user, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
    older = tmp_path / "sql"
    older.mkdir()
    for migration in discover()[:-1]:
        (older / migration.path.name).write_bytes(migration.path.read_bytes())
    apply_migrations(DatabaseParams.from_url(url), older)
    conn.select_db(name)
    yield url, conn
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
    conn.close()


def versions(conn) -> set[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM schema_migrations")
        return {row[0] for row in cur.fetchall()}


def test_worker_and_commands_refuse_a_schema_behind_the_code_and_do_not_migrate(other_db):
    url, conn = other_db
    latest = max(m.version for m in discover())
    before = versions(conn)
    assert latest not in before
    for command in (["worker"], ["jobs"], ["api-key", "list"]):
        done = mailjobs(*command, DATABASE_URL=url)
        assert done.returncode == 1, (command, done.stderr)
        line = one_sentence(done)
        assert f"this mailjobs needs {latest:03d}: run `mailjobs migrate`" in line, line
    assert versions(conn) == before                       # nothing was applied
    migrated = mailjobs("migrate", DATABASE_URL=url)
    assert migrated.returncode == 0, migrated.stderr
    assert latest in versions(conn)
    assert mailjobs("jobs", DATABASE_URL=url).returncode == 0


def test_a_schema_newer_than_the_code_is_refused(other_db):
    url, conn = other_db
    assert mailjobs("migrate", DATABASE_URL=url).returncode == 0
    with conn.cursor() as cur:
        cur.execute("INSERT INTO schema_migrations (version, name, checksum) "
                    "VALUES (999, 'from_a_newer_release', REPEAT('0', 64))")
    done = mailjobs("worker", DATABASE_URL=url)
    assert done.returncode == 1
    assert "newer than this mailjobs" in one_sentence(done)


def test_no_schema_at_all_says_to_migrate(database, dao):
    url = database.url.replace("/mailjobs_test?", "/mailjobs_never_created?")
    done = mailjobs("jobs", DATABASE_URL=url)
    assert done.returncode == 1
    assert "has no mailjobs schema yet: run `mailjobs migrate`" in one_sentence(done)


def test_version():
    done = mailjobs("--version")
    assert done.returncode == 0 and done.stdout.startswith("mailjobs, version "), done.stdout


def test_two_processes_share_one_local_mariadb_and_the_last_stops_it(tmp_path):
    a, b = LocalMariaDB(tmp_path / "db"), LocalMariaDB(tmp_path / "db")
    barrier = threading.Barrier(2)
    started: dict[str, bool] = {}

    def use(name: str, server: LocalMariaDB) -> None:
        barrier.wait()
        started[name] = server.use()

    threads = [threading.Thread(target=use, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert sorted(started.values()) == [False, True]   # one server, started once
        pid = a.pid()
        assert pid is not None
        first = a if started["a"] else b
        second = b if first is a else a
        assert first.release() is False                    # the other still uses it
        assert second.pid() == pid
        pymysql.connect(unix_socket=str(second.socket), user="root").close()
        assert second.release() is True                    # the last user stops it
        assert a.pid() is None
    finally:
        LocalMariaDB(tmp_path / "db").stop()


def test_an_operators_command_does_not_start_the_local_database(tmp_path, monkeypatch):
    """Without DATABASE_URL a command other than serve/worker/migrate needs the project-local
    MariaDB running, and says so instead of starting one."""
    from mailjobs import bootstrap
    from mailjobs.settings import Settings

    monkeypatch.setattr(bootstrap, "local_database", lambda: LocalMariaDB(tmp_path / "none"))
    with pytest.raises(bootstrap.StartupError, match="project-local MariaDB .* is not running"):
        bootstrap.ensure_database(Settings(database_url=None), start=False)
    assert not (tmp_path / "none" / "data").exists()


def test_a_failing_migration_is_one_sentence_naming_it(other_db, tmp_path):
    url, conn = other_db
    with conn.cursor() as cur:    # the newest migration's work done by hand, not recorded
        for statement in discover()[-1].statements():
            cur.execute(statement)
    done = mailjobs("migrate", DATABASE_URL=url)
    assert done.returncode == 1
    line = one_sentence(done)
    assert f"migration {discover()[-1].version:03d}_{discover()[-1].name} failed at" in line
