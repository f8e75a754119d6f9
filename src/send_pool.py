"""The runner's sending threads, shared fairly between API keys and between jobs.

A claimed recipient waits in its job's queue until a thread is free. A free thread takes the
next recipient of the API key with the fewest sends running (round-robin between keys on a
tie), and within that key of the job with the fewest running. One key never occupies more
than `per_key` threads: the runner has RUNNER_CONCURRENCY + 1 threads and a key may use
RUNNER_CONCURRENCY of them, so however slow one key's renders or sends are (a template that
takes its whole RENDER_TIMEOUT, a Gmail call that hangs for GMAIL_TIMEOUT), another key's
recipient always finds a thread, and a key alone loses nothing.

Work is handed out as `concurrent.futures.Future`s, like a ThreadPoolExecutor's: a queued
recipient's future can be cancelled (pause, cancel, warm stop), a running one cannot.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class FairPool:
    def __init__(self, threads: int, per_key: int, name: str) -> None:
        self.per_key = max(1, per_key)
        self._lock = threading.Lock()
        self._queues: dict[int, dict[int, deque[_Item]]] = {}   # key -> job -> waiting
        self._running_key: Counter[int] = Counter()
        self._running_job: Counter[int] = Counter()
        # Idle threads. The one that finished a send most recently is woken first, so a key
        # sending one message after another keeps one thread (and its transport connection).
        # Not "the most recently idle": a thread woken for nothing (a key at its cap) goes back
        # to idle after the one that just sent, and would take the next send (a second SMTP
        # connection for a sequential stream, found by test_transport_smtp under load).
        self._idle: list[threading.Condition] = []
        self._finished: dict[threading.Condition, int] = {}   # thread -> when it last sent
        # Threads notified that have not looked for work yet. No more are woken than items can
        # start now: two recipients submitted while the only thread allowed to run them is
        # busy used to wake two threads, and the second could take the next one (a second SMTP
        # connection for a one-at-a-time stream: test_transport_smtp's max-messages test).
        self._woken = 0
        self._sends = 0
        # Seconds during which at least one send ran (the runner's send rate is measured over
        # this time, not the wall clock: a hand that ran dry waiting on a slow claim would
        # otherwise measure the database's speed, not the sending threads').
        self._running = 0
        self._busy = 0.0
        self._busy_since = 0.0
        self._closed = False
        # A warm stop was asked for: no waiting item starts any more (shutdown() cancels them
        # first, then lets the threads drain the cancelled ones). A plain flag, set without the
        # lock: hold() is called from a signal handler, which may run while this very thread
        # holds the lock.
        self._held = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                         for i in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    def submit(self, key: int, job: int, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("submit after shutdown")
            self._queues.setdefault(key, {}).setdefault(job, deque()).append((future, fn, args))
            self._wake_one()
        return future

    def hold(self) -> None:
        """Start nothing more that waits: sends already running go on (a warm stop)."""
        self._held = True

    def shutdown(self, wait: bool = True) -> None:
        """No more submissions; threads end when nothing runnable is left (cancel first what
        should not run: a hold ends here, and what still waits then runs)."""
        with self._lock:
            self._closed = True
            self._held = False
            while self._idle:
                self._idle.pop().notify()
                self._woken += 1
        if wait:
            for thread in self._threads:
                thread.join()

    def busy_seconds(self) -> float:
        """Seconds, since the pool started, during which at least one send was running."""
        with self._lock:
            if self._running:
                return self._busy + time.monotonic() - self._busy_since
            return self._busy

    def _wake_one(self) -> None:
        if self._idle and (self._closed or self._woken < self._startable()):
            me = max(self._idle, key=lambda c: self._finished.get(c, 0))
            self._idle.remove(me)
            self._woken += 1
            me.notify()

    def _startable(self) -> int:
        """Under the lock: how many waiting items could start now (per_key allowing)."""
        n = 0
        for key, jobs in self._queues.items():
            room = self.per_key - self._running_key[key]
            if room > 0:
                n += min(room, sum(len(q) for q in jobs.values()))
        return n

    def _next(self) -> tuple[int, int, _Item] | None:
        """Under the lock: the next item to run, or None when nothing may run now."""
        if self._held:
            return None
        best = None
        for key in self._queues:
            running = self._running_key[key]
            if running < self.per_key and (best is None or running < self._running_key[best]):
                best = key
        if best is None:
            return None
        jobs = self._queues.pop(best)   # re-inserted last: round-robin between equal keys
        job = min(jobs, key=self._running_job.__getitem__)
        item = jobs[job].popleft()
        if not jobs[job]:
            del jobs[job]
        if jobs:
            self._queues[best] = jobs
        return best, job, item

    def _take(self, me: threading.Condition) -> tuple[int, int, _Item] | None:
        """Under the lock: the next item this thread runs (counted as running), waiting while
        there is none; None when the pool is shut down and empty."""
        while True:
            picked = self._next()
            if picked is not None:
                key, job, (future, _fn, _args) = picked
                if not future.set_running_or_notify_cancel():
                    continue   # cancelled while it waited
                self._running_key[key] += 1
                self._running_job[job] += 1
                if self._running == 0:
                    self._busy_since = time.monotonic()
                self._running += 1
                if self._queues:
                    self._wake_one()   # more waiting: another idle thread may take some
                return picked
            if self._closed and not self._queues:
                return None
            self._idle.append(me)
            me.wait()
            if me in self._idle:   # not notified (spurious wake-up)
                self._idle.remove(me)
            else:
                self._woken -= 1

    def _work(self) -> None:
        me = threading.Condition(self._lock)
        done: tuple[int, int] | None = None
        while True:
            with self._lock:
                if done is not None:
                    self._running_key[done[0]] -= 1
                    self._running_job[done[1]] -= 1
                    self._running -= 1
                    if self._running == 0:
                        self._busy += time.monotonic() - self._busy_since
                    self._sends += 1
                    self._finished[me] = self._sends
                picked = self._take(me)
                if picked is None:
                    self._wake_one()   # shutting down: pass it on
                    return
            key, job, (future, fn, args) = picked
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # the future carries it to the runner's loop
                future.set_exception(exc)
            done = (key, job)
