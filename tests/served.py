"""The Flask app served for real: waitress (with the service's two lanes of threads) on
127.0.0.1 in a background thread, so tests see what a client sees: queued requests, threads
stuck on the database, answer times."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from waitress.server import create_server

from mailjobs.web import lanes as http_lanes


@contextmanager
def served(app: Any, threads: int = 8) -> Iterator[str]:
    """Serve `app` as `mailjobs serve` does; yields its base URL."""
    server = create_server(app, host="127.0.0.1", port=0, threads=threads,
                           _dispatcher=http_lanes.dispatcher(threads))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:   # the threads first: one finishing after close() would find no trigger
        server.task_dispatcher.shutdown(timeout=5)
        server.close()


def timed(method: str, url: str, timeout: float = 60, **kw: Any) -> tuple[int, Any, dict, float]:
    """(status, JSON body (or the text when it is not JSON), headers, seconds) of one request."""
    started = time.monotonic()
    r = requests.request(method, url, timeout=timeout, **kw)
    elapsed = time.monotonic() - started
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return r.status_code, body, dict(r.headers), elapsed
