"""The runner's sending threads (send_pool.FairPool) on a warm stop: what runs finishes, nothing
that waits starts any more, and the pool still shuts down once the waiting items are cancelled."""
from __future__ import annotations

import threading

from mailjobs.send_pool import FairPool


def test_a_held_pool_starts_nothing_that_waits_and_shuts_down_once_it_is_cancelled():
    pool = FairPool(2, per_key=1, name="t")
    release, running, started = threading.Event(), threading.Event(), []

    def send(n: int) -> int:
        started.append(n)
        if n == 1:
            running.set()
            release.wait(10)
        return n

    first = pool.submit(7, 1, send, 1)
    second = pool.submit(7, 1, send, 2)      # waits: one send at a time for key 7
    assert running.wait(10)
    pool.hold()                              # a warm stop: the first runs to its end
    release.set()
    assert first.result(10) == 1
    third = pool.submit(8, 2, send, 3)       # another key, a free thread: still held
    threading.Event().wait(0.2)              # time it would take a free thread to start it
    assert started == [1]
    assert second.cancel() and third.cancel()
    pool.shutdown(wait=True)
    assert started == [1]
