"""Which statements store a job's recipients fastest (issue 17). Not a test: it prints figures.

Against a private MariaDB (temporary directory), the same N recipient rows (address, name,
3-key variables JSON) stored into one jobs row, in one transaction, committed, timed from the
Python rows to the commit (so each way's own client CPU counts):

- `executemany B`: pymysql's executemany of queries.sql `insert_recipients`, B rows a statement
  (what Dao.create_job did before issue 17);
- `values B`: the INSERT text built by `dao_mysql.insert_values` (what it does now), B rows a statement;
- `load data B`: `LOAD DATA LOCAL INFILE` from an in-memory file (memfd, /proc/self/fd/N), B rows
  a statement, tab-separated with the same escaping (the connection needs `local_infile=True`,
  the server `local_infile=ON`).

The ways alternate within each repeat (table emptied between), median of the repeats.

    .venv/bin/python bench/enqueue_statements.py [--rows 100000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import pymysql

from benchlib import private_mariadb
from mailjobs import api_keys
from mailjobs.dao_mysql import Dao, insert_values
from mailjobs.db.migrations import apply_migrations
from mailjobs.records import NewJob
from mailjobs.settings import Settings

Row = tuple[str, str | None, str | None]


def rows_for(n: int) -> list[Row]:
    plans = ("free", "pro", "team")
    return [(f"user{i:06d}@example.com", f"User {i:06d}",
             json.dumps({"code": f"C{i:06d}", "plan": plans[i % 3], "n": i})) for i in range(n)]


def connect(settings: Settings) -> pymysql.connections.Connection:
    p = settings.db
    return pymysql.connect(host=p.host, port=p.port, user=p.user, password=p.password,
                           database=p.database, unix_socket=p.unix_socket, charset="utf8mb4",
                           autocommit=False, local_infile=True,
                           init_command="SET time_zone = '+00:00'")


SQL = "INSERT INTO job_recipients (job_id, to_email, name, variables) VALUES (%s, %s, %s, %s)"


def executemany(conn, job_id: int, rows: list[Row], batch: int) -> None:
    with conn.cursor() as cur:
        for s in range(0, len(rows), batch):
            cur.executemany(SQL, [(job_id, *r) for r in rows[s:s + batch]])


def values(conn, job_id: int, rows: list[Row], batch: int) -> None:
    head = SQL.rpartition("VALUES")[0] + "VALUES "
    with conn.cursor() as cur:
        for s in range(0, len(rows), batch):
            for v in insert_values(job_id, rows[s:s + batch], False, 1 << 30):
                cur.execute(head + v)


_TSV = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\0", "\\0"))


def load_data(conn, job_id: int, rows: list[Row], batch: int) -> None:
    with conn.cursor() as cur:
        for s in range(0, len(rows), batch):
            flat = "\x02".join("\x01".join((e, "\x03" if n is None else n,
                                            "\x03" if v is None else v))
                               for e, n, v in rows[s:s + batch])
            for special, escaped in _TSV:
                if special in flat:
                    flat = flat.replace(special, escaped)
            text = flat.replace("\x03", "\\N").replace("\x01", "\t").replace("\x02", "\n")
            fd = os.memfd_create("recipients")
            try:
                os.write(fd, text.encode("utf-8") + b"\n")
                cur.execute(f"LOAD DATA LOCAL INFILE '/proc/self/fd/{fd}' INTO TABLE "
                            "job_recipients CHARACTER SET utf8mb4 FIELDS TERMINATED BY '\\t' "
                            "ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
                            "(to_email, name, variables) SET job_id = %s", (job_id,))
            finally:
                os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ways: list[tuple[str, Callable, int]] = [
        ("executemany 1,000", executemany, 1000), ("executemany 10,000", executemany, 10_000),
        ("values 1,000", values, 1000), ("values 5,000", values, 5000),
        ("values 10,000", values, 10_000), ("values 50,000", values, 50_000),
        ("load data 5,000", load_data, 5000), ("load data 100,000", load_data, 100_000)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in ways}
    rows = rows_for(args.rows)
    with private_mariadb("statements") as url:
        settings = Settings(database_url=url)
        apply_migrations(settings.db)
        dao = Dao(settings)
        key = api_keys.create_key(dao, "b", ["*"]).id
        conn = connect(settings)
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION(), @@local_infile, @@max_allowed_packet")
            version, infile, packet = cur.fetchone()
        for _ in range(args.repeats):
            for name, way, batch in ways:
                with conn.cursor() as cur:
                    cur.execute("TRUNCATE TABLE job_recipients")
                    cur.execute("DELETE FROM jobs")
                conn.commit()
                job_id = dao.create_job(NewJob(key, "b@example.com", None, None, "s", None,
                                               "t", {}, len(rows), 0, None, None), [])
                t0 = time.perf_counter()
                way(conn, job_id, rows, batch)
                conn.commit()
                times[name].append(time.perf_counter() - t0)
                with conn.cursor() as cur:
                    cur.execute("SELECT COUNT(*) FROM job_recipients WHERE job_id = %s",
                                (job_id,))
                    assert cur.fetchone()[0] == len(rows), name
        conn.close()
        dao.close()
    print(f"MariaDB {version} (local_infile={infile}, max_allowed_packet={packet}); "
          f"{args.rows:,} rows, {args.repeats} repeats, median (all)")
    print()
    print("| statements | ms | rows/s | vs executemany 10,000 |")
    print("|---|---:|---:|---:|")
    base = statistics.median(times["executemany 10,000"])
    for name, t in times.items():
        m = statistics.median(t)
        print(f"| {name} | {m * 1000:,.0f} ({', '.join(f'{x * 1000:,.0f}' for x in t)}) | "
              f"{args.rows / m:,.0f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
