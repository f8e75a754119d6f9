"""Helpers shared by the benchmarks in bench/ (run as `python bench/<name>.py`)."""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

TESTS = Path(__file__).resolve().parents[1] / "tests"


def from_tests(name: str) -> ModuleType:
    """One of the test suite's own servers (tests/fake_gmail.py, latency_proxy.py, served.py),
    loaded from its file: the benchmarks run the same fakes as the tests."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def private_mariadb(database: str) -> Iterator[str]:
    """A MariaDB of the benchmark's own in a temporary directory: yields the URL of
    `database` on it; stopped and deleted afterwards."""
    from mailjobs.db.local_mariadb import LocalMariaDB

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
