"""Helpers shared by the benchmarks in bench/ (run as `python bench/<name>.py`)."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def private_mariadb(database: str) -> Iterator[str]:
    """A MariaDB of the benchmark's own in a temporary directory: yields the URL of
    `database` on it; stopped and deleted afterwards. (src/ must be on sys.path.)"""
    from local_mariadb import LocalMariaDB

    with tempfile.TemporaryDirectory() as tmp:
        server = LocalMariaDB(Path(tmp) / "db")
        server.start()
        try:
            yield server.url(database)
        finally:
            server.stop()


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in kB, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None
