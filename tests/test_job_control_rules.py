"""What each control action makes of a job (job_control's decide_* functions), decided without a
database; tests/test_job_control.py runs them through the API against a real one."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mailjobs.job_control import (
    Conflict,
    Decision,
    JobState,
    decide_cancel,
    decide_pause,
    decide_resume,
    decide_retry,
)


def state(status: str, started: bool = False, future: bool = False,
          paused_by: str | None = None, **kw: Any) -> JobState:
    return JobState(status, started, future, paused_by, "s@example.com", **kw)


def test_cancel_ends_any_unfinished_job_and_refuses_a_finished_one():
    assert decide_cancel(state("running"), "ops") == Decision("cancelled", None,
                                                              "cancelled by ops", True)
    assert decide_cancel(state("paused")).status == "cancelled"
    for final in ("completed", "completed_with_errors", "failed", "cancelled"):
        with pytest.raises(Conflict, match=f"job is {final}"):
            decide_cancel(state(final))


def test_pause_holds_an_active_job_only():
    assert decide_pause(state("queued"), "auto", "errors") == Decision("paused", "auto",
                                                                        "errors", False)
    assert decide_pause(state("running")).reason == "paused by operator"
    with pytest.raises(Conflict, match="paused already"):
        decide_pause(state("paused"))
    with pytest.raises(Conflict, match="only queued, scheduled or running"):
        decide_pause(state("completed"))


def test_resume_returns_a_paused_job_to_where_it_was():
    assert decide_resume(state("paused")).status == "queued"
    assert decide_resume(state("paused", started=True)).status == "running"
    assert decide_resume(state("paused", started=True, future=True)).status == "scheduled"
    with pytest.raises(Conflict, match="only paused jobs"):
        decide_resume(state("running"))


def test_retry_needs_a_match_and_the_variables_and_keeps_a_paused_job_paused():
    assert decide_retry(state("completed_with_errors", matched=2), ["failed"], []) == \
        Decision("running", None, None, False)
    assert decide_retry(state("failed", future=True, matched=1), ["failed"], []).status == \
        "scheduled"
    assert decide_retry(state("paused", paused_by="ops", matched=1), ["failed"], []) == \
        Decision("paused", "ops", None, False)
    with pytest.raises(Conflict, match=r"error_code in \['bounce_5xx'\]"):
        decide_retry(state("failed", matched=0), ["failed"], ["bounce_5xx"])
    erased = datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(Conflict, match="erased on 2026-03-01"):
        decide_retry(state("failed", matched=3, erased_at=erased), ["failed"], [])
