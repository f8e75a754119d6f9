"""How long a `mailjobs worker` is deaf to SIGTERM after it is spawned (the window in which a
stop signal kills it by the signal instead of stopping it cleanly).

Spawns the installed console script N times and polls /proc/<pid>/status every 0.2 ms for the
moment SIGTERM is caught (SigCgt). With entry.py that is the first line of mailjobs' own code;
before it only the Python interpreter starts. For comparison, the same is timed for a bare
`python -c` that installs a handler on its first line (the interpreter's floor), and for the
point where the old code installed its handlers (the worker's JobRunner, after the imports,
settings, database and migrations): the worker's "runner ... started" log line.

    .venv/bin/python bench/startup.py [--runs 20]
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import percentile
from mailjobs.db.local_mariadb import LocalMariaDB

ROOT = Path(__file__).resolve().parents[1]


def catches(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(x for x in f if x.startswith("SigCgt:"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return False
    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(ms until SIGTERM is caught, ms until the runner's start line), then a clean stop."""
    with open(log, "w") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    while not catches(proc.pid):
        time.sleep(0.0002)
    caught = (time.monotonic() - t0) * 1000
    started = float("nan")
    if "worker" in cmd:
        while "started (worker" not in log.read_text():
            time.sleep(0.002)
        started = (time.monotonic() - t0) * 1000
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()
    return caught, started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = LocalMariaDB(Path(tmp) / "db")
        db.start()
        try:
            db.create_database("bench")
            env = {**os.environ, "DATABASE_URL": db.url("bench"), "MAIL_TRANSPORT": "null",
                   "POLL_INTERVAL": "0.05"}
            floor = [sys.executable, "-c", "import os, signal, time\n"
                     "signal.signal(signal.SIGTERM, lambda *a: os._exit(0))\ntime.sleep(60)"]
            worker = [str(ROOT / ".venv" / "bin" / "mailjobs"), "worker"]
            rows = {"python -c (interpreter floor)": [], "mailjobs worker": []}
            for _ in range(args.runs):
                rows["python -c (interpreter floor)"].append(timed(floor, env, Path(tmp) / "a"))
                rows["mailjobs worker"].append(timed(worker, env, Path(tmp) / "b"))
        finally:
            db.stop()
    print("| process | SIGTERM caught after, p50 ms | p95 ms | runner started after, "
          "p50 ms | runs |\n|---|---:|---:|---:|---:|")
    for name, values in rows.items():
        caught = [c for c, _ in values]
        started = [s for _, s in values if s == s]
        print(f"| {name} | {percentile(caught, 0.5):.1f} | {percentile(caught, 0.95):.1f} | "
              f"{percentile(started, 0.5):.0f} |  {len(values)} |" if started else
              f"| {name} | {percentile(caught, 0.5):.1f} | {percentile(caught, 0.95):.1f} | - "
              f"| {len(values)} |")


if __name__ == "__main__":
    main()
