"""A local MariaDB Galera cluster for tests and for trying mailjobs on one: three nodes on
127.0.0.1, each in a directory of its own (data, socket, pid file, log), with the provider
library of Debian's galera-4 package.

    python -m mailjobs.db.local_galera start|stop|status|kill N [--dir var/galera] [--base-port 4300]

(`scripts/galera.sh` runs it.) Node N listens for SQL on BASE+10N, for Galera replication on
BASE+10N+1, for incremental state transfers (IST) on +2 and full ones (SST, rsync) on +3. The
first start initialises node 1, bootstraps the cluster from it, creates the `mailjobs` user, and
lets nodes 2 and 3 join by state transfer; `start` after `kill N` brings node N back (it catches
up by IST). `start` prints one line, `DATABASE_URL=mysql://…` with all three hosts.

As root the nodes run as the `mysql` user: rsync's daemon, which receives a joiner's state
transfer, drops root for `nobody` and could not write a root-owned data directory.
"""
from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pymysql

from mailjobs.db.local_mariadb import LocalDatabaseError, LocalMariaDB, server_binary

PROVIDERS = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so",
             "/usr/lib64/galera-4/libgalera_smm.so")
USER, PASSWORD = "mailjobs", "mailjobs"


def provider() -> str | None:
    """The Galera provider library, or None where galera-4 is not installed."""
    return next((p for p in PROVIDERS if Path(p).is_file()), None)


def missing() -> str | None:
    """Why a local cluster cannot run here (None: it can)."""
    if provider() is None:
        return "no Galera provider library (apt-get install galera-4)"
    if shutil.which("rsync") is None:
        return "no rsync for the joiners' state transfer (apt-get install rsync)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("mysql")
        except KeyError:
            return "running as root without a mysql user for the nodes (apt-get install mariadb-server)"
    return None


@dataclass
class Node(LocalMariaDB):
    """One node: a LocalMariaDB's directory layout (data, socket, pid file, log, tmp) and pid()
    under `<cluster>/nodeN`, listening on TCP as well. LocalGalera starts and stops it with
    Galera's options, never through LocalMariaDB.start()."""
    number: int = 1
    base_port: int = 4300

    @property
    def port(self) -> int:
        return self.base_port + 10 * self.number

    def status(self, timeout: float = 2) -> dict[str, str]:
        """wsrep_* status of the node ({} when it does not answer)."""
        try:
            conn = pymysql.connect(unix_socket=str(self.socket), user="root",
                                   connect_timeout=timeout, read_timeout=timeout)
        except pymysql.err.OperationalError:
            return {}
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW STATUS LIKE 'wsrep_%'")
                return {k: str(v) for k, v in cur.fetchall()}
        except pymysql.err.Error:
            return {}
        finally:
            conn.close()


class LocalGalera:
    """Three (or `size`) Galera nodes under `root`."""

    def __init__(self, root: Path, base_port: int = 4300, size: int = 3) -> None:
        self.root = root.resolve()
        self.base_port = base_port
        self.nodes = [Node(self.root / f"node{n}", number=n, base_port=base_port)
                      for n in range(1, size + 1)]
        self.run_as = "mysql" if os.geteuid() == 0 else None

    def node(self, number: int) -> Node:
        return self.nodes[number - 1]

    def url(self, database: str = "mailjobs", sync_wait: bool = True) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return (f"mysql://{USER}:{PASSWORD}@{hosts}/{database}"
                + ("?wsrep_sync_wait=1" if sync_wait else ""))

    # --- starting -----------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> None:
        """Start every node that is not running; the first start creates the cluster."""
        reason = missing()
        if reason:
            raise LocalDatabaseError(reason)
        running = [n for n in self.nodes if n.pid() is not None]
        if not running:
            first = self._bootstrap_candidate()
            self._start_node(first, bootstrap=True, timeout=timeout)
            running = [first]
        for node in self.nodes:
            if node not in running:
                self._start_node(node, bootstrap=False, timeout=timeout)

    def _bootstrap_candidate(self) -> Node:
        """Node 1 on a new cluster; after a full stop or crash, the most advanced node."""
        if not (self.node(1).datadir / "mysql").is_dir():
            self._initialise(self.node(1))
            return self.node(1)
        best, best_seqno = self.node(1), -2
        for node in self.nodes:
            state = _grastate(node)
            if state.get("safe_to_bootstrap") == "1":
                return node
            seqno = int(state.get("seqno", "-1"))
            if seqno > best_seqno:
                best, best_seqno = node, seqno
        path = best.datadir / "grastate.dat"   # every node was killed: the one that saw most
        path.write_text(re.sub(r"safe_to_bootstrap:\s*0", "safe_to_bootstrap: 1", path.read_text()))
        return best

    def _initialise(self, node: Node) -> None:
        self._prepare(node)
        cmd = [server_binary("mariadb-install-db", "mysql_install_db"), "--no-defaults",
               f"--datadir={node.datadir}", "--auth-root-authentication-method=normal",
               "--skip-test-db", f"--tmpdir={node.tmpdir}"]
        if self.run_as:
            cmd.append(f"--user={self.run_as}")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise LocalDatabaseError(f"mariadb-install-db failed: {done.stderr[-2000:]}")

    def _prepare(self, node: Node) -> None:
        for path in (node.datadir, node.tmpdir):
            path.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            for parent in self.root.parents:
                if not parent.stat().st_mode & 0o001 and parent.stat().st_uid != user.pw_uid:
                    raise LocalDatabaseError(f"the {self.run_as} user the nodes run as cannot "
                                             f"reach {self.root}: {parent} is not traversable")
            for path in (self.root, node.root, node.datadir, node.tmpdir):
                os.chown(path, user.pw_uid, user.pw_gid)
            self.root.chmod(0o755)

    def _start_node(self, node: Node, bootstrap: bool, timeout: float) -> None:
        self._prepare(node)
        peers = ",".join(f"127.0.0.1:{n.port + 1}" for n in self.nodes)
        cmd = [server_binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={node.datadir}",
               f"--socket={node.socket}", f"--pid-file={node.pidfile}",
               f"--log-error={node.logfile}", f"--tmpdir={node.tmpdir}",
               "--bind-address=127.0.0.1", f"--port={node.port}",
               "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
               "--binlog-format=ROW", "--default-storage-engine=InnoDB",
               "--innodb-autoinc-lock-mode=2", "--innodb-buffer-pool-size=128M",
               "--innodb-flush-log-at-trx-commit=2", "--max-connections=500",
               "--wsrep-on=ON", f"--wsrep-provider={provider()}", "--wsrep-cluster-name=mailjobs",
               f"--wsrep-node-name=node{node.number}",
               f"--wsrep-node-address=127.0.0.1:{node.port + 1}",
               f"--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{node.port + 1};"
               f"ist.recv_addr=127.0.0.1:{node.port + 2};gcache.size=256M",
               f"--wsrep-sst-receive-address=127.0.0.1:{node.port + 3}",
               "--wsrep-sst-method=rsync", f"--wsrep-cluster-address=gcomm://{peers}"]
        if bootstrap:
            cmd.append("--wsrep-new-cluster")
        if self.run_as:
            cmd.append(f"--user={self.run_as}")
        node.socket.unlink(missing_ok=True)
        # Its own session: a test's or a shell's Ctrl-C is not the cluster's
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalDatabaseError(f"node {node.number} exited: see {node.logfile}; it "
                                         f"ends: {_tail(node.logfile)}")
            if node.status().get("wsrep_local_state_comment") == "Synced":
                if bootstrap:
                    self._create_user(node)
                return
            time.sleep(0.2)
        raise LocalDatabaseError(f"node {node.number} not Synced within {timeout}s: "
                                 f"see {node.logfile}")

    def _create_user(self, node: Node) -> None:
        conn = pymysql.connect(unix_socket=str(node.socket), user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' "
                            f"IDENTIFIED BY '{PASSWORD}'")
                cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1'")
        finally:
            conn.close()

    # --- stopping -----------------------------------------------------------------------------
    def kill(self, number: int) -> None:
        """SIGKILL node `number`: a host that dies (no clean leave, no state saved)."""
        pid = self.node(number).pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)

    def stop(self, timeout: float = 60) -> None:
        """Stop the nodes cleanly, the first one last (it can bootstrap the next start)."""
        for node in reversed(self.nodes):
            pid = node.pid()
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                if not _wait_gone(pid, timeout):
                    os.kill(pid, signal.SIGKILL)
                    _wait_gone(pid, 10)

    def destroy(self) -> None:
        for node in self.nodes:
            pid = node.pid()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 10)
        shutil.rmtree(self.root, ignore_errors=True)


def _grastate(node: Node) -> dict[str, str]:
    try:
        text = (node.datadir / "grastate.dat").read_text()
    except FileNotFoundError:
        return {}
    return dict(re.findall(r"^(\w+):\s*(\S*)", text, flags=re.M))


def _tail(path: Path, lines: int = 8) -> str:
    """The end of a node's log, for an error that outlives its directory."""
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:   # our own child: reap it, or it stays a zombie that kill(0) still finds
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/galera.sh", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "kill", "destroy"])
    parser.add_argument("node", nargs="?", type=int, help="kill: the node (1-3)")
    parser.add_argument("--dir", default="var/galera", help="where the nodes live")
    parser.add_argument("--base-port", type=int, default=4300)
    args = parser.parse_args(argv)
    cluster = LocalGalera(Path(args.dir), args.base_port)
    try:
        if args.command == "start":
            cluster.start()
            print(f"DATABASE_URL={cluster.url()}")
        elif args.command == "stop":
            cluster.stop()
        elif args.command == "destroy":
            cluster.destroy()
        elif args.command == "kill":
            if args.node not in range(1, len(cluster.nodes) + 1):
                parser.error("kill needs the node's number (1-3)")
            cluster.kill(args.node)
        for node in cluster.nodes:
            state = node.status()
            print(f"node{node.number} 127.0.0.1:{node.port} pid={node.pid() or '-'} "
                  f"state={state.get('wsrep_local_state_comment', 'down')} "
                  f"cluster_size={state.get('wsrep_cluster_size', '-')}",
                  file=sys.stderr if args.command == "start" else sys.stdout)
    except LocalDatabaseError as exc:
        print(f"galera: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
