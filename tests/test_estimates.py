"""Plans before sending (issue 18): the estimate in the POST answer and GET /api/jobs/<id>, the
WARN_DAYS warning, and max_duration refusing a job that cannot finish in time."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailjobs.estimates import DAY, duration
from mailjobs.rate_limit import Limits
from test_api_enqueue import assert_nothing_written, body, post


def h(key):
    return {"X-API-Key": key}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_30000_recipients_at_2000_a_day_take_about_15_days_and_say_so(client, key, dao):
    assert (dao.settings.sender_daily_cap, dao.settings.sender_rate_per_minute) == (2000, 60)
    r = post(client, key, body(30_000))
    assert r.status_code == 202, r.json
    est = r.json["estimate"]
    assert est["limited_by"] == "daily_cap"
    assert (est["recipients"], est["queued_ahead"], est["daily_cap"]) == (30_000, 0, 2000)
    # 15 windows of 2,000: the last starts after 14 days and takes 2,000 / 60 min
    assert est["seconds"] == 14 * DAY + 2000
    finishes = at(est["finishes_at"]) - datetime.now(UTC)
    assert timedelta(days=14) < finishes < timedelta(days=15)
    warning = [w for w in r.json["warnings"] if "days" in w]
    assert len(warning) == 1 and "daily cap of 2000" in warning[0] and "WARN_DAYS" in warning[0]
    job = client.get(f"/api/jobs/{r.json['job_id']}", headers=h(key)).json
    assert job["estimate"]["limited_by"] == "daily_cap"
    assert job["estimate"]["recipients"] == 30_000


def test_a_small_job_is_paced_by_the_rate_without_a_warning(client, key):
    r = post(client, key, body(120))
    est = r.json["estimate"]
    assert (est["limited_by"], est["seconds"], est["recipients"]) == ("rate", 120, 120)
    assert not [w for w in r.json["warnings"] if "days" in w]


def test_what_is_queued_for_the_sender_counts_first_and_its_own_limits_apply(client, key, dao):
    dao.set_sender_limits("ops@example.com", 10, 500)
    first = post(client, key, body(400)).json
    assert first["estimate"]["queued_ahead"] == 0
    second = post(client, key, body(300, sender_email="ops@example.com")).json
    est = second["estimate"]
    assert (est["queued_ahead"], est["recipients"]) == (400, 300)
    assert (est["rate_per_minute"], est["daily_cap"], est["limited_by"]) == (10, 500, "daily_cap")
    assert est["seconds"] == DAY + 6 * 200          # 500 now, the other 200 a day later at 10/min
    other = post(client, key, body(5, sender_email="news@example.org")).json["estimate"]
    assert other["queued_ahead"] == 0               # another sender's queue is its own
    with dao.transaction() as cur:                  # a finished job is not planned any more
        cur.execute("UPDATE jobs SET status = 'completed' WHERE id = %s", (first["job_id"],))
    assert client.get(f"/api/jobs/{first['job_id']}", headers=h(key)).json["estimate"] is None


def test_sends_of_the_last_24_hours_use_up_the_window():
    limits = Limits(60, 2000, 5.0)
    est = duration(100, limits, 1950)
    assert est.limited_by == "daily_cap" and est.seconds == DAY + 50
    assert duration(100, Limits(0, 0, 5.0), 0).limited_by == "none"
    assert duration(100, Limits(0, 0, 5.0), 0).seconds == 0
    assert duration(100, Limits(0, 50, 5.0), 0).seconds == DAY    # no rate: whole windows
    assert duration(3000, Limits(1, 2000, 5.0), 0).limited_by == "rate"   # 1/min: 50 h anyway


def test_no_warning_with_warn_days_0(dao, key):
    from mailjobs.api_server import create_app

    client = create_app(dao.settings.with_overrides(warn_days=0), dao).test_client()
    dao.set_sender_limits("ops@example.com", None, 10)
    r = post(client, key, body(100))
    assert r.json["estimate"]["days"] >= 9
    assert not [w for w in r.json["warnings"] if "days" in w]


@pytest.mark.parametrize("limit", ["P7D", 7 * 86400, "PT12H"])
def test_max_duration_refuses_a_job_that_cannot_finish_and_stores_nothing(client, key, dao,
                                                                        limit):
    dao.set_sender_limits("ops@example.com", None, 100)
    r = post(client, key, body(1500, max_duration=limit))     # 15 windows of 100: 14 days
    assert (r.status_code, r.json["error"], r.json["field"]) == (
        400, "cannot_finish_in_time", "max_duration")
    assert "nothing was stored" in r.json["message"]
    assert_nothing_written(dao)


@pytest.mark.parametrize("limit", ["P15D", 15 * 86400.0])
def test_max_duration_long_enough_is_accepted(client, key, dao, limit):
    dao.set_sender_limits("ops@example.com", None, 100)
    r = post(client, key, body(1500, max_duration=limit))
    assert r.status_code == 202, r.json
    assert r.json["estimate"]["limited_by"] == "daily_cap"


@pytest.mark.parametrize("limit", [0, -5, "soon", "P-1D"])
def test_a_bad_max_duration_is_a_validation_error_naming_it(client, key, dao, limit):
    r = post(client, key, body(2, max_duration=limit))
    assert (r.status_code, r.json["error"], r.json["field"]) == (
        400, "validation_error", "max_duration")
    assert_nothing_written(dao)


def test_max_duration_of_a_sender_the_key_may_not_use_is_still_403(client, make_key):
    key = make_key(senders=["*@example.org"])
    r = post(client, key, body(2, sender_email="x@example.com", max_duration=1))
    assert (r.status_code, r.json["error"]) == (403, "sender_not_allowed")
