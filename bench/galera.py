"""Runners on a MariaDB Galera cluster (issue 19): throughput of one worker on one node against
three workers on three nodes, the claims lost to certification conflicts, and the pause a node
loss costs.

    .venv/bin/python bench/galera.py [--recipients 10000] [--kill-recipients 3000]

A three-node cluster (mailjobs.db.local_galera) is started in a temporary directory; workers are
real `python -m mailjobs.job_runner` processes with the null transport. Rows:
1. one worker, DATABASE_URL on node 1: recipients/s;
2. three workers, each on its own node: recipients/s, and claims re-run after a conflict
   (Galera's certification failures, reported as deadlocks) per 1,000 recipients;
3. two workers (on nodes 1 and 2) while node 1 is SIGKILLed mid-job: the longest gap between two
   consecutive sends (sent_at) around the kill, and that every recipient was sent once.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymysql

from mailjobs import api_keys
from mailjobs.api_server import create_app
from mailjobs.dao_mysql import Dao
from mailjobs.db.local_galera import LocalGalera, missing
from mailjobs.db.migrations import apply_migrations
from mailjobs.settings import DatabaseParams, Settings

WORKER_ENV = {"MAIL_TRANSPORT": "null", "POLL_INTERVAL": "0.05", "SENDER_RATE_PER_MINUTE": "0",
              "SENDER_DAILY_CAP": "0", "HEARTBEAT_INTERVAL": "0.5",
              "DB_CONNECT_TIMEOUT": "3", "IN_DOUBT_POLICY": "check", "EMBEDDED_RUNNER": "0",
              "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"}


def url(cluster: LocalGalera, db: str, first: int) -> str:
    order = [first] + [n.number for n in cluster.nodes if n.number != first]
    hosts = ",".join(f"127.0.0.1:{cluster.node(n).port}" for n in order)
    return f"mysql://mailjobs:mailjobs@{hosts}/{db}?wsrep_sync_wait=1"


def post(cluster: LocalGalera, db: str, n: int) -> tuple[Dao, int]:
    apply_migrations(DatabaseParams.from_url(url(cluster, db, 1)))
    dao = Dao(Settings(database_url=url(cluster, db, 1), sender_rate_per_minute=0,
                       sender_daily_cap=0))
    key = api_keys.create_key(dao, "bench", ["*"]).key
    body = {"sender_email": "ops@example.com",
            "template": {"subject": "Hi {{ name }}", "text": "Hello {{ name }}"},
            "recipients": [{"email": f"u{i:05d}@example.com", "name": f"User {i}"}
                           for i in range(n)]}
    r = create_app(dao.settings, dao).test_client().post(
        "/api/jobs/send_template_emails", json=body, headers={"X-API-Key": key})
    assert r.status_code == 202, r.json
    return dao, r.json["job_id"]


def workers(cluster: LocalGalera, db: str, nodes: list[int], logdir: Path) -> list:
    procs = []
    for i, node in enumerate(nodes):
        log = open(logdir / f"{db}-worker{i}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mailjobs.job_runner"], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **WORKER_ENV, "DATABASE_URL": url(cluster, db, node)}))
    return procs


def wait_done(dao: Dao, job_id: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while dao.job(job_id).status not in ("completed", "completed_with_errors", "failed"):
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} not done: {dao.recipient_counts(job_id)}")
        time.sleep(0.1)


def stop(procs: list) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def conflicts(logdir: Path, db: str) -> int:
    return sum(log.read_text().count("lost a lock conflict")
               for log in logdir.glob(f"{db}-worker*.log"))


def sends(cluster: LocalGalera, db: str, job_id: int) -> list:
    conn = pymysql.connect(unix_socket=str(cluster.node(2).socket), user="root", database=db)
    with conn.cursor() as cur:
        cur.execute("SELECT sent_at FROM job_recipients WHERE job_id = %s AND status = 'sent' "
                    "ORDER BY sent_at", (job_id,))
        rows = [r[0] for r in cur.fetchall()]
    conn.close()
    return rows


def throughput(cluster: LocalGalera, db: str, n: int, nodes: list[int], logdir: Path) -> dict:
    dao, job_id = post(cluster, db, n)
    started = time.monotonic()
    procs = workers(cluster, db, nodes, logdir)
    wait_done(dao, job_id)
    elapsed = time.monotonic() - started
    stop(procs)
    sent = dao.recipient_counts(job_id).get("sent", 0)
    lost = conflicts(logdir, db)
    dao.close()
    return {"sent": sent, "seconds": round(elapsed, 2), "per_s": round(sent / elapsed),
            "conflicts": lost, "conflicts_per_1000": round(1000 * lost / max(sent, 1), 1)}


def node_loss(cluster: LocalGalera, db: str, n: int, logdir: Path) -> dict:
    dao, job_id = post(cluster, db, n)
    dao.close()
    view = Dao(Settings(database_url=url(cluster, db, 2)))
    procs = workers(cluster, db, [1, 2], logdir)
    while view.recipient_counts(job_id).get("sent", 0) < n // 3:
        time.sleep(0.02)
    killed = time.time()
    cluster.kill(1)
    wait_done(view, job_id)
    stop(procs)
    counts = view.recipient_counts(job_id)
    view.close()
    times = sends(cluster, db, job_id)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    cluster.start(timeout=180)
    return {"counts": counts, "longest_gap_s": round(max(gaps), 2),
            "killed_at": time.strftime("%H:%M:%S", time.gmtime(killed))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=10000)
    parser.add_argument("--kill-recipients", type=int, default=3000)
    args = parser.parse_args()
    if missing():
        raise SystemExit(missing())
    root = Path(tempfile.mkdtemp(prefix="mailjobs-galera-bench-"))
    root.chmod(0o755)   # as root the nodes run as the mysql user
    cluster = LocalGalera(root / "cluster", base_port=4700)
    try:
        t0 = time.monotonic()
        cluster.start(timeout=180)
        print(f"cluster Synced in {time.monotonic() - t0:.1f} s", flush=True)
        one = throughput(cluster, "b_one", args.recipients, [1], root)
        print(f"1. one worker on node 1: {one}", flush=True)
        three = throughput(cluster, "b_three", args.recipients, [1, 2, 3], root)
        print(f"2. three workers on three nodes: {three}", flush=True)
        print(f"   ratio three/one: {three['per_s'] / one['per_s']:.2f}", flush=True)
        loss = node_loss(cluster, "b_loss", args.kill_recipients, root)
        print(f"3. node 1 killed mid-job: {loss}", flush=True)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
