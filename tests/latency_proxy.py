"""A small TCP proxy that adds latency each way: a far database on loopback.

Listens on 127.0.0.1 (port 0: a free one) and forwards every connection to a Unix socket or a
(host, port), delaying each chunk by `delay` seconds in each direction (so a round trip costs
2 x delay more) without limiting throughput: chunks are stamped when read and written out when
due, in order. The kernel has no netem qdisc here, hence userspace. Used by the slow-link tests
and bench/remote_db.py.

`cut()` makes the link silent, as a partition does: connections are accepted, bytes are read
and held, nothing is delivered (no RST, no FIN) until `restore()`, when what was held goes
through, as TCP's retransmissions would deliver it.

Run as a program it is a plain relay (the network-namespace tests use it to cross between
namespaces): `python tests/latency_proxy.py LISTEN TARGET [DELAY]`, each of LISTEN and TARGET
`unix:/path` or `tcp:host:port`; it prints "ready" once listening.
"""
from __future__ import annotations

import queue
import socket
import threading
import time

Target = str | tuple[str, int]


class LatencyProxy:
    def __init__(self, target: Target, delay: float,
                 listen: Target = ("127.0.0.1", 0)) -> None:
        self.target, self.delay = target, delay
        if isinstance(listen, str):
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(listen)
            self.port = 0
        else:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(listen)
            self.port = self._listener.getsockname()[1]
        self._listener.listen(128)
        self._closed = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> LatencyProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, database: str) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def cut(self) -> None:
        self._open.clear()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed.set()
        self._open.set()
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _connect(self) -> socket.socket:
        if isinstance(self.target, str):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.target)
        else:
            s = socket.create_connection(self.target)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if client.family != socket.AF_UNIX:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # connect upstream in a thread of its own: over a cut link a connect hangs, and
            # must not hold up the connections that come after it
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = self._connect()
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            chunks: queue.Queue = queue.Queue()
            threading.Thread(target=self._read, args=(src, chunks), daemon=True).start()
            threading.Thread(target=self._write, args=(dst, chunks), daemon=True).start()

    def _read(self, src: socket.socket, chunks: queue.Queue) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            chunks.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, dst: socket.socket, chunks: queue.Queue) -> None:
        while True:
            due, data = chunks.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)   # the latency itself: each chunk is held until it is due
            self._open.wait()      # a cut link: held until restored
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return


def _address(spec: str) -> Target:
    kind, _, rest = spec.partition(":")
    if kind == "unix":
        return rest
    host, _, port = rest.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    import sys

    proxy = LatencyProxy(_address(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0,
                         listen=_address(sys.argv[1]))
    with proxy:
        print("ready", proxy.port, flush=True)
        threading.Event().wait()
