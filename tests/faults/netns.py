"""A real network between hosts, for the partition tests: two network namespaces this test
run creates (and deletes), joined by a veth pair on a private /24 (10.200.S.0/24, S from the
pid), with a MariaDB listening on TCP inside the "db" namespace.

    app namespace  10.200.S.1  ==veth==  10.200.S.2  db namespace: mariadbd :3306

Nothing gets an address outside these namespaces. What must cross into them goes through
relays (tests/latency_proxy.py run as a program inside a namespace) on Unix sockets, which are
files and so reach every namespace:
- `db_relay`: a Unix socket in the test's directory -> (inside app) TCP to 10.200.S.2:3306,
  so this process's service talks to MariaDB over the real veth link;
- `gmail_in_app(port)`: 127.0.0.1:port inside app -> a Unix socket -> the fake Gmail, so a
  worker started inside app reaches the fake Gmail.
`cut()` makes the link silent: inside db, `ip route add blackhole 10.200.S.1/32` (replies to
app vanish, no RST, connects and reads hang; checked on these machines); `restore()` deletes
the route. The db namespace's own Unix socket (`server_socket`) is not on the link: the test
reads and checks rows through it.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymysql

from mailjobs.db.local_mariadb import LocalMariaDB, server_binary

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "tests" / "latency_proxy.py"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"mj12probe{os.getpid()}"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Network:
    def __init__(self, root: Path) -> None:
        tag = os.getpid() % 100000
        self.root = root
        self.app, self.db = f"mj12app{tag}", f"mj12db{tag}"
        s = os.getpid() % 250 + 1
        self.app_addr, self.db_addr = f"10.200.{s}.1", f"10.200.{s}.2"
        self.veth_app, self.veth_db = f"mj12a{tag}", f"mj12d{tag}"
        self.server = LocalMariaDB(root / "mariadb")
        self._procs: list[subprocess.Popen] = []
        self._cut = False

    # --- the link -----------------------------------------------------------------------------
    def create(self) -> Network:
        _ip("netns", "add", self.app)
        _ip("netns", "add", self.db)
        _ip("link", "add", self.veth_app, "type", "veth", "peer", "name", self.veth_db)
        _ip("link", "set", self.veth_app, "netns", self.app)
        _ip("link", "set", self.veth_db, "netns", self.db)
        for ns, dev, addr in ((self.app, self.veth_app, self.app_addr),
                              (self.db, self.veth_db, self.db_addr)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        return self

    def cut(self) -> None:
        _ip("-n", self.db, "route", "add", "blackhole", f"{self.app_addr}/32")
        self._cut = True

    def restore(self) -> None:
        if self._cut:
            _ip("-n", self.db, "route", "del", "blackhole", f"{self.app_addr}/32", check=False)
            self._cut = False

    # --- processes inside the namespaces --------------------------------------------------------
    def popen(self, ns: str, cmd: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], start_new_session=True, **kw)
        self._procs.append(proc)
        return proc

    def start_database(self, database: str) -> None:
        """mariadbd inside db, on TCP 10.200.S.2:3306 and its own Unix socket; root may log in
        from the app side of the link; `database` created."""
        self.server._initialise()
        cmd = [server_binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={self.server.datadir}",
               f"--socket={self.server.socket}", "--port=3306", f"--bind-address={self.db_addr}",
               f"--pid-file={self.server.pidfile}", f"--log-error={self.server.logfile}",
               f"--tmpdir={self.server.tmpdir}",
               "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
               "--innodb-buffer-pool-size=128M", "--max-connections=500",
               "--innodb-flush-log-at-trx-commit=2", "--skip-name-resolve", "--user=root"]
        proc = self.popen(self.db, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not self.server._answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mariadbd in {self.db} did not start: see "
                                   f"{self.server.logfile}")
            time.sleep(0.1)
        conn = pymysql.connect(unix_socket=str(self.server.socket), user="root")
        with conn.cursor() as cur:
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'10.200.%' IDENTIFIED BY ''")
            cur.execute("GRANT ALL ON *.* TO 'root'@'10.200.%'")
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 "
                        "COLLATE utf8mb4_unicode_ci")
        conn.close()

    def relay(self, ns: str, listen: str, target: str) -> None:
        """A byte relay (latency_proxy.py, no delay) started inside `ns`."""
        proc = self.popen(ns, [sys.executable, str(PROXY), listen, target],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if not (proc.stdout.readline() or "").startswith("ready"):
            raise RuntimeError(f"relay {listen} -> {target} in {ns} did not start")

    def db_relay(self) -> str:
        """A Unix socket whose bytes cross the veth link to MariaDB; returns its path."""
        path = str(self.root / "db-over-veth.sock")
        self.relay(self.app, f"unix:{path}", f"tcp:{self.db_addr}:3306")
        return path

    def gmail_in_app(self, fake_port: int, port: int) -> None:
        """127.0.0.1:`port` inside app reaches the fake Gmail on this host's 127.0.0.1."""
        path = str(self.root / "gmail.sock")
        from latency_proxy import LatencyProxy
        outer = LatencyProxy(("127.0.0.1", fake_port), 0.0, listen=path).__enter__()
        self._closers = getattr(self, "_closers", []) + [outer.close]
        self.relay(self.app, f"tcp:127.0.0.1:{port}", f"unix:{path}")

    def close(self) -> None:
        self.restore()
        for proc in reversed(self._procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        for close in getattr(self, "_closers", []):
            close()
        _ip("netns", "del", self.app, check=False)
        _ip("netns", "del", self.db, check=False)
