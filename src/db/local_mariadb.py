"""A private MariaDB server in a directory of its own (data dir, socket, pid file, log).

`make run` uses one under var/mariadb when DATABASE_URL is not set; the tests start a throwaway
one in a temporary directory. The server listens on a Unix socket only (no TCP port), so it never
collides with a MariaDB/MySQL already running on the machine.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pymysql

log = logging.getLogger("mailjobs.localdb")


class LocalDatabaseError(RuntimeError):
    """The private server could not be installed, initialised or started."""


def server_binary(*names: str) -> str:
    for name in names:
        for folder in (None, "/usr/sbin", "/usr/local/sbin", "/usr/bin"):
            path = shutil.which(name, path=folder) if folder else shutil.which(name)
            if path:
                return path
    raise LocalDatabaseError(
        f"none of {', '.join(names)} is installed: run scripts/ensure-mariadb.sh "
        "(apt-get install -y mariadb-server) or set DATABASE_URL"
    )


@dataclass
class LocalMariaDB:
    """One data directory's server. Several mailjobs processes of one checkout may share it
    (two `make run`, a `serve` and a `worker`): `use()` starts it under a lock, so two servers
    never start on one data directory, and registers the process as a user; `release()` stops it
    only when the last user leaves."""
    root: Path
    _proc: subprocess.Popen[bytes] | None = None
    _user_fd: int | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "mysqld.pid"

    @property
    def logfile(self) -> Path:
        return self.root / "mysqld.log"

    @property
    def tmpdir(self) -> Path:
        """Its own, not /tmp: a MariaDB starting up removes the temporary files it finds in
        its tmpdir, those of another server's bootstrap included (two suites at once failed
        with "Unknown table 'mysql.tmp_user_sys'")."""
        return self.root / "tmp"

    def url(self, database: str) -> str:
        return f"mysql://root@localhost/{database}?unix_socket={self.socket}"

    def pid(self) -> int | None:
        """The server's pid when it is alive, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        except PermissionError:
            return None

    def _initialise(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        cmd = [
            server_binary("mariadb-install-db", "mysql_install_db"),
            "--no-defaults", f"--datadir={self.datadir}", "--auth-root-authentication-method=normal",
            "--skip-test-db", f"--tmpdir={self.tmpdir}",
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise LocalDatabaseError(f"mariadb-install-db failed: {done.stderr[-2000:]}")

    def start(self, timeout: float = 30.0) -> bool:
        """Start the server unless it already runs; True when this call started it."""
        if self.pid() is not None:
            return False
        if not (self.datadir / "mysql").is_dir():
            log.info("initialising a private MariaDB in %s", self.datadir)
            self._initialise()
        self.tmpdir.mkdir(exist_ok=True)
        cmd = [
            server_binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={self.datadir}",
            f"--socket={self.socket}", "--skip-networking", f"--pid-file={self.pidfile}",
            f"--log-error={self.logfile}", f"--tmpdir={self.tmpdir}", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci", "--innodb-buffer-pool-size=256M",
            "--max-connections=500", "--innodb-flush-log-at-trx-commit=2",
        ]
        if os.geteuid() == 0:
            cmd.append("--user=root")
        self.socket.unlink(missing_ok=True)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalDatabaseError(f"mariadbd exited: see {self.logfile}")
            if self._answers():
                self._proc = proc
                log.info("private MariaDB started (pid %s, socket %s)", proc.pid, self.socket)
                return True
            time.sleep(0.1)
        proc.kill()
        raise LocalDatabaseError(f"mariadbd did not answer within {timeout}s: see {self.logfile}")

    def _answers(self) -> bool:
        try:
            pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=2).close()
            return True
        except pymysql.err.OperationalError:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down cleanly (SIGTERM, then wait for it to exit)."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if self._proc is not None and self._proc.pid == pid:  # our child: reap it
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            log.info("private MariaDB stopped")
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                log.info("private MariaDB stopped")
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Held while the server is started or stopped (root/start.lock)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "start.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)   # closing releases the lock

    def use(self) -> bool:
        """Start the server unless it runs, and hold a share of it (a shared lock on
        root/users.lock) until release(); True when this call started it."""
        with self._exclusive():
            started = self.start()
            if self._user_fd is None:
                self._user_fd = os.open(self.root / "users.lock", os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._user_fd, fcntl.LOCK_SH)
        return started

    def release(self) -> bool:
        """Give up this process's share; stop the server if no other process holds one.
        True when this call stopped it."""
        if self._user_fd is None:
            return False
        with self._exclusive():
            fd, self._user_fd = self._user_fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # nobody else shares it
            except BlockingIOError:
                log.info("private MariaDB left running: another mailjobs process uses it")
                os.close(fd)
                return False
            try:
                self.stop()
            finally:
                os.close(fd)
            return True

    def create_database(self, name: str) -> None:
        conn = pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` "
                            "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        finally:
            conn.close()
