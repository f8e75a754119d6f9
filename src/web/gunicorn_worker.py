"""gunicorn's threaded worker with the two lanes of `web.lanes`: requests for FAST_PATHS
(/healthz, /metrics, /openapi.json: their database work is bounded by HEALTHZ_DB_TIMEOUT or
absent) are served by FAST_THREADS threads of their own, so a load balancer's health check and
a Prometheus scrape are answered while every one of the HTTP_THREADS threads waits on a database
that does not answer. deploy/gunicorn.conf.py selects it (`worker_class`).

gthread hands a connection to its thread pool before reading the request, so the lane is chosen
from the request line's first bytes, peeked from the socket (MSG_PEEK: nothing is consumed) or
from what the parser already buffered on a kept-alive connection. A connection with nothing to
read yet waits in the worker's poller (as gthread does with a slow client), not in a thread.
Behind TLS terminated by gunicorn itself the bytes cannot be read this way: everything then goes
to the main lane (deploy/ terminates TLS in nginx).
"""
from __future__ import annotations

import selectors
import socket
import time
from concurrent import futures
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from mailjobs.web.lanes import FAST_PATHS, FAST_THREADS

_PEEK_BYTES = 64
# "GET /healthz " or "GET /healthz?...": the request lines the fast lane serves
_FAST_PREFIXES = tuple(f"GET {path}{end}".encode() for path in FAST_PATHS for end in (" ", "?"))


def lane_of(first_bytes: bytes) -> str:
    """"fast" for a GET of one of FAST_PATHS, "main" for anything else (including a request
    line that has not fully arrived: the main lane reads it as gthread always has)."""
    return "fast" if first_bytes.startswith(_FAST_PREFIXES) else "main"


class LaneThreadWorker(ThreadWorker):
    """gthread with a second, small thread pool for FAST_PATHS."""

    fast_pool: futures.ThreadPoolExecutor

    def init_process(self) -> None:
        self.fast_pool = futures.ThreadPoolExecutor(max_workers=FAST_THREADS,
                                                    thread_name_prefix="fast-lane")
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        first = self._first_bytes(conn)
        if first is None:
            self._wait_for_data(conn)
            return
        pool = self.fast_pool if lane_of(first) == "fast" else self.tpool
        done = pool.submit(self.handle, conn)
        done.add_done_callback(
            lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _first_bytes(self, conn: Any) -> bytes | None:
        """The start of the next request without consuming it; None when nothing has arrived
        yet, b"" when it cannot be read here (TLS, a closed socket: the main lane finds out)."""
        parser = getattr(conn, "parser", None)
        if parser is not None:
            buffered: bytes = parser.unreader.buf.getvalue()
            if buffered:
                return buffered[:_PEEK_BYTES]
        if self.cfg.is_ssl:
            return b""
        try:
            peeked: bytes = conn.sock.recv(_PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return peeked
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _wait_for_data(self, conn: Any) -> None:
        """What gthread does with a connection whose request has not arrived: the poller waits
        for it (until the keepalive timeout), then `on_pending_socket_readable` enqueues it."""
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.cfg.keepalive
        self.pending_conns.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self.on_pending_socket_readable, conn))

    def handle_quit(self, sig: int, frame: Any) -> None:
        self.fast_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.fast_pool.shutdown(wait=False)
