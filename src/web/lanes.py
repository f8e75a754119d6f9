"""Two lanes of waitress threads: requests that never wait on a stuck database call (/healthz,
/metrics, /openapi.json: their database work is bounded by HEALTHZ_DB_TIMEOUT or absent) are
served by threads of their own, so they answer while every main thread is waiting on the
database. Everything else goes to the HTTP_THREADS main threads as before.
"""
from __future__ import annotations

from typing import Any

from waitress.task import ThreadedTaskDispatcher

FAST_PATHS = ("/healthz", "/metrics", "/openapi.json")
FAST_THREADS = 2


class LaneDispatcher(ThreadedTaskDispatcher):
    """waitress' dispatcher (the main lane) with a second one for FAST_PATHS."""

    def __init__(self, fast_threads: int = FAST_THREADS) -> None:
        super().__init__()
        self.fast = ThreadedTaskDispatcher()
        self.fast.set_thread_count(fast_threads)

    def add_task(self, task: Any) -> None:
        # waitress hands over the channel; its first parsed request is the one to serve
        requests = getattr(task, "requests", None) or []
        path = getattr(requests[0], "path", "") if requests else ""
        if path in FAST_PATHS:
            self.fast.add_task(task)
        else:
            super().add_task(task)

    def shutdown(self, cancel_pending: bool = True, timeout: int = 5) -> bool:
        self.fast.shutdown(cancel_pending, timeout)
        done: bool = super().shutdown(cancel_pending, timeout)
        return done


def dispatcher(threads: int) -> LaneDispatcher:
    lanes = LaneDispatcher()
    lanes.set_thread_count(threads)
    return lanes
