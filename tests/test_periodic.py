"""periodic.Every: the due-check of the runner loop's own timers (no database, no threads)."""
from __future__ import annotations

from mailjobs.periodic import Every


def test_every_is_due_an_interval_after_it_was_marked():
    every = Every(10.0)
    every.mark(100.0)
    assert not every.due(109.9)
    assert every.due(110.0)
    assert every.since(104.0) == 4.0


def test_take_marks_only_when_due():
    every = Every(5.0)
    every.mark(0.0)
    assert not every.take(4.0)
    assert every.take(5.0)
    assert not every.take(9.0)      # marked at 5.0 by the take above
    assert every.take(10.0)


def test_due_now_is_due_at_the_first_check_and_the_interval_may_be_a_function():
    interval = [1.0]
    every = Every(lambda: interval[0], due_now=True)
    assert every.take(50.0)
    assert not every.due(50.5)
    interval[0] = 0.25              # read at each check
    assert every.due(50.5)
