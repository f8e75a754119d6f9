"""A real HTTP receiver of webhooks on 127.0.0.1 (a threading http.server), for the tests.

It records every POST (headers, body, when) and answers what it is told: by default 200; a
`respond(request_number) -> (status, headers)` function changes that; `hold` makes requests wait
until released (a receiver that does not answer).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def events(self) -> list[dict[str, Any]]:
        data = json.loads(self.body)
        return data if isinstance(data, list) else [data]


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.respond = lambda n: (200, {})
        self.hold = threading.Event()
        self.hold.set()              # set: answer at once
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    n = len(receiver.requests)
                    status, headers = receiver.respond(n)
                    receiver.requests.append(Received(
                        {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic(),
                        status))
                receiver.hold.wait(60)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def events(self, delivered_only: bool = True) -> list[dict[str, Any]]:
        with self.lock:
            chosen = [r for r in self.requests if not delivered_only or 200 <= r.status < 300]
        return [e for r in chosen for e in r.events]
