"""Several database hosts in DATABASE_URL (a Galera cluster's nodes): parsed and checked at start,
connections go to the first host that answers (a refused or a silent one is passed over within
the connect timeout), the process remembers where it is and goes back to the first host after
DB_FAILBACK_AFTER; the migration lock works without GET_LOCK (a lock row, taken over from a
holder whose connection is gone). The cluster itself is in tests/faults/test_galera.py."""
from __future__ import annotations

import logging

import pymysql
import pytest

from latency_proxy import LatencyProxy
from mailjobs.dao_mysql import Dao
from mailjobs.db import guard, migrations
from mailjobs.settings import DatabaseParams
from test_startup import mailjobs, one_sentence, refused_port


def test_a_url_may_list_several_hosts_each_with_its_port():
    db = DatabaseParams.from_url("mysql://u:p%40ss@h1:3307,h2,[::1]:3309/jobs?wsrep_sync_wait=1")
    assert db.addresses == (("h1", 3307), ("h2", 3306), ("::1", 3309))
    assert (db.host, db.port, db.user, db.password, db.database) == ("h1", 3307, "u", "p@ss", "jobs")
    assert db.init_command() == "SET time_zone = '+00:00', wsrep_sync_wait = 1"
    assert DatabaseParams.from_url(db.url()).addresses == db.addresses
    assert db.where() == "h1:3307,h2:3306,::1:3309"


@pytest.mark.parametrize("url, says", [
    ("mysql://u@h1,,h3/x", "empty host in its host list"),
    ("mysql://u@h1,h2:port/x", "invalid port: 'h2:port'"),
    ("mysql://u@h1/x?wsrep_sync_wait=yes", "wsrep_sync_wait must be a number"),
])
def test_a_bad_host_list_is_refused_naming_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        DatabaseParams.from_url(url)


def test_the_process_stays_on_the_host_that_answered_and_fails_back_later():
    a, b, c = ("a", 1), ("b", 2), ("c", 3)
    hosts = guard.Hosts((a, b, c), failback_after=3600)
    assert hosts.order() == [a, b, c]
    hosts.answered(b)
    assert hosts.order() == [b, c, a]
    hosts.failback_after = 0
    assert hosts.order() == [a, b, c]          # time to try the first host again


def test_connections_pass_over_a_refused_and_a_silent_host(database, caplog):
    params = DatabaseParams.from_url(database.url)
    with LatencyProxy(params.unix_socket, 0.0) as silent, \
            LatencyProxy(params.unix_socket, 0.0) as live:
        silent.cut()   # accepts, then nothing: a frozen host, a dead link
        url = (f"mysql://root@127.0.0.1:{refused_port()},127.0.0.1:{silent.port},"
               f"127.0.0.1:{live.port}/{params.database}")
        dao = Dao(database.settings(database_url=url, db_connect_timeout=1))
        try:
            with caplog.at_level(logging.INFO, logger="mailjobs.db"):
                with dao.transaction() as cur:
                    cur.execute("SELECT 1")
                    assert cur.fetchone()[0] == 1
        finally:
            dao.close()
    said = caplog.text
    assert "did not answer" in said and "Connection refused" in said, said
    assert "timed out" in said, said
    assert f"new connections now go to 127.0.0.1:{live.port}" in said, said


def test_all_hosts_unreachable_is_one_sentence_naming_them_all():
    p1, p2 = refused_port(), refused_port()
    done = mailjobs("worker", DATABASE_URL=f"mysql://root@127.0.0.1:{p1},127.0.0.1:{p2}/x",
                    STARTUP_DB_WAIT="1")
    assert done.returncode == 1
    assert f"cannot reach the database at 127.0.0.1:{p1},127.0.0.1:{p2}" in one_sentence(done)


@pytest.fixture()
def raw(database, dao):
    params = DatabaseParams.from_url(database.url)
    conn = pymysql.connect(unix_socket=params.unix_socket, user=params.user,
                           database=params.database, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM schema_migration_lock")
    yield params, conn
    with conn.cursor() as cur:
        cur.execute("DELETE FROM schema_migration_lock")
    conn.close()


def test_a_migration_lock_left_by_a_connection_that_is_gone_is_taken_over(raw, caplog):
    params, conn = raw
    with conn.cursor() as cur:
        cur.execute("INSERT INTO schema_migration_lock VALUES (1, 'gone:1:x', 4000000000, "
                    "CONCAT(@@hostname, ':', @@port), NOW(6))")
    with caplog.at_level(logging.WARNING, logger="mailjobs.migrate"):
        assert migrations.apply_migrations(params) == []       # nothing pending, no wait
    assert "taking over the migration lock of gone:1:x" in caplog.text
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM schema_migration_lock")
        assert cur.fetchone()[0] == 0                           # and released


def test_a_migration_lock_held_by_a_live_process_is_waited_for_then_named(raw, monkeypatch):
    params, conn = raw
    with conn.cursor() as cur:
        cur.execute("INSERT INTO schema_migration_lock VALUES (1, 'busy:7:y', CONNECTION_ID(), "
                    "CONCAT(@@hostname, ':', @@port), NOW(6))")
    monkeypatch.setattr(migrations, "LOCK_WAIT", 0.5)
    with pytest.raises(migrations.MigrationError, match="migrations are locked by busy:7:y"):
        migrations.apply_migrations(params)
