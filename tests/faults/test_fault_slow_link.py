"""A far database: every byte between the service and MariaDB delayed 10 or 50 ms each way by a
real TCP proxy (tests/latency_proxy.py). Everything still works and the results are right: a
job is stored, read back, sent exactly once and counted; the deadline and the breaker never
take a slow link for a dead one."""
from __future__ import annotations

import pytest
from faults_tools import assert_exactly_once, check_counts, h, post_job

from latency_proxy import LatencyProxy
from mailjobs.api_server import create_app
from mailjobs.dao_mysql import Dao
from runner_helpers import running, wait_job_done


@pytest.fixture()
def socket_path(database):
    if database.server is None:
        pytest.skip("needs the private test server (TEST_DATABASE_URL is set)")
    return str(database.server.socket)


@pytest.mark.parametrize("delay", [0.010, 0.050])
def test_everything_works_over_a_slow_link(delay, socket_path, dao, fake, gmail_settings,
                                           make_key):
    key = make_key(senders=["*"])
    n = 120
    with LatencyProxy(socket_path, delay) as proxy:
        settings = gmail_settings.with_overrides(database_url=proxy.url(dao.params.database),
                                                 in_doubt_policy="check")
        far = Dao(settings)
        try:
            client = create_app(settings, far).test_client()
            job_id = post_job(client, key, n)
            assert client.get(f"/api/jobs/{job_id}", headers=h(key)).json["total"] == n
            with running(settings, far):
                assert wait_job_done(far, job_id, timeout=120) == "completed"
            assert check_counts(client, key, far, job_id) == {"sent": n}
            page = client.get(f"/api/jobs/{job_id}/recipients?limit=50", headers=h(key)).json
            assert len(page["recipients"]) == 50 and page["next_after"]
            assert far.breaker.opened_count == 0, "a slow link was taken for a dead database"
        finally:
            far.close()
    assert_exactly_once(fake, dao, job_id, n)
