"""The status sets are defined once (mailjobs.states); the SQL that lists statuses lists those
same sets, and a job's final status follows from its recipients' counts (no database here)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailjobs import states
from mailjobs.job_status import final_status
from mailjobs.records import JOB_STATUSES
from mailjobs.states import JobStatus, RecipientStatus

QUERIES = Path(states.__file__).with_name("queries.sql")
J, R = JobStatus, RecipientStatus

# Every status list in queries.sql, by statement and by its place there: the set it must be.
SQL_LISTS = {
    ("claimable_jobs", 0): states.SENDABLE_JOB_STATUSES,
    ("expired_jobs", 0): states.OPEN_JOB_STATUSES,
    ("expiring_recipients", 0): states.WAITING_RECIPIENT_STATUSES,
    ("expire_recipients", 0): states.WAITING_RECIPIENT_STATUSES,
    ("start_expired_job", 0): states.OPEN_JOB_STATUSES - {J.RUNNING},
    ("claim_recipients", 0): states.SENDABLE_RECIPIENT_STATUSES,
    ("start_job", 0): states.NOT_STARTED_JOB_STATUSES,
    ("unfinished_count", 0): states.OPEN_RECIPIENT_STATUSES,
    ("cancel_recipients", 0): states.WAITING_RECIPIENT_STATUSES,
    ("error_summary", 0): states.ERROR_RECIPIENT_STATUSES,
    ("pause_sender_jobs", 0): states.SENDABLE_JOB_STATUSES,
    ("queue_depth", 0): states.QUEUED_RECIPIENT_STATUSES,
    ("queue_depth", 1): states.OPEN_JOB_STATUSES,
    ("oldest_queued_age", 0): states.SENDABLE_JOB_STATUSES,
    ("complete_suppressed_job", 0): states.NOT_STARTED_JOB_STATUSES,
    ("purge_count_delete", 0): states.FINAL_JOB_STATUSES,
    ("purge_count_erase", 0): states.FINAL_JOB_STATUSES,
    ("purge_jobs_to_delete", 0): states.FINAL_JOB_STATUSES,
    ("purge_jobs_to_erase", 0): states.FINAL_JOB_STATUSES,
    ("purge_lock_job", 0): states.FINAL_JOB_STATUSES,
    ("active_sender_jobs", 0): states.SENDABLE_JOB_STATUSES,
    ("sender_plan", 0): states.ACTIVE_JOB_STATUSES,
    ("sender_plan", 1): states.OPEN_RECIPIENT_STATUSES,
    ("attachment_used_by", 0): states.FINAL_JOB_STATUSES,
}


def sql_status_lists() -> dict[tuple[str, int], set[str]]:
    """Each `IN ('a', 'b', ...)` of quoted words in queries.sql, by statement name and order."""
    parts = re.split(r"^-- name: *(\S+).*$", QUERIES.read_text(), flags=re.M)
    found: dict[tuple[str, int], set[str]] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lists = re.findall(r"\bIN \(('[a-z_]+'(?:,\s*'[a-z_]+')*)\)", body)
        for i, listed in enumerate(lists):
            found[(name, i)] = set(re.findall(r"'([a-z_]+)'", listed))
    return found


def test_every_status_list_in_the_sql_is_one_of_the_python_sets():
    found = sql_status_lists()
    assert set(found) == set(SQL_LISTS), "a status list in queries.sql is not mapped here " \
        "to the set of mailjobs.states it must equal (or a mapped one is gone)"
    for where, listed in found.items():
        assert listed == {s.value for s in SQL_LISTS[where]}, where


def test_the_sql_names_who_paused_and_sender_states_the_enums_have():
    sql = QUERIES.read_text()
    paused_by = set(re.findall(r"paused_by\s*=\s*'([a-z_]+)'", sql))
    auth_states = set(re.findall(r"auth_state\s*(?:=|<>)\s*'([a-z_]+)'", sql))
    assert paused_by and paused_by <= {p.value for p in states.PausedBy}
    assert auth_states and auth_states <= {a.value for a in states.SenderAuthState}


def test_final_and_open_split_the_statuses():
    assert states.FINAL_RECIPIENT_STATUSES | states.OPEN_RECIPIENT_STATUSES == set(R)
    assert not states.FINAL_RECIPIENT_STATUSES & states.OPEN_RECIPIENT_STATUSES
    assert states.OPEN_RECIPIENT_STATUSES == {R.QUEUED, R.SENDING, R.RETRYING}
    assert states.FINAL_JOB_STATUSES | states.OPEN_JOB_STATUSES == set(J)
    assert states.FINAL_JOB_STATUSES == {J.COMPLETED, J.COMPLETED_WITH_ERRORS, J.FAILED,
                                         J.CANCELLED}
    # a final recipient is delivered, not delivered, or was never meant to go
    assert states.FINAL_RECIPIENT_STATUSES == (states.DELIVERED_RECIPIENT_STATUSES
                                               | states.UNDELIVERED_RECIPIENT_STATUSES
                                               | {R.CANCELLED, R.SUPPRESSED})


def test_statuses_compare_and_print_as_the_strings_stored():
    assert R.IN_DOUBT == "in_doubt" and f"{R.IN_DOUBT}" == "in_doubt" and str(J.FAILED) == "failed"
    assert "completed_with_errors" in states.FINAL_JOB_STATUSES
    assert JOB_STATUSES[0] == "queued" and type(JOB_STATUSES[0]) is str
    assert states.in_order(states.QUEUED_RECIPIENT_STATUSES) == [
        R.QUEUED, R.SENDING, R.RETRYING, R.IN_DOUBT]


@pytest.mark.parametrize("counts, status, reason", [
    ({"sent": 3}, J.COMPLETED, None),
    ({"sent": 2, "cancelled": 1, "suppressed": 4}, J.COMPLETED, None),
    ({"bounced": 1, "failed": 1}, J.COMPLETED_WITH_ERRORS, "1 of 2 recipients not sent"),
    ({"failed": 2, "in_doubt": 1, "expired": 1}, J.FAILED,
     "4 of 4 recipients not sent, 1 in doubt, 1 expired"),
    ({"sent": 1, "expired": 2}, J.COMPLETED_WITH_ERRORS,
     "2 of 3 recipients not sent, 2 expired"),
    ({"cancelled": 5}, J.COMPLETED, None),
    ({}, J.COMPLETED, None),
])
def test_a_finished_jobs_status_and_reason_follow_from_its_counts(counts, status, reason):
    assert final_status(counts) == (status, reason)
