"""Scenario: one worker is cut off from the database (a silent partition: its packets vanish)
for 2 x LEASE_SECONDS while another worker goes on. The other takes the cut-off worker's
claims over when their leases expire; the cut-off worker must not *start* sends of claims it
can no longer renew (its lease guard), or both would send them. Every recipient is sent exactly
once (IN_DOUBT_POLICY=check finds the sends that were in flight), and when the link is back the
cut-off worker's late outcomes do not overwrite the other's.

The partition here is the userspace one of tests/latency_proxy.py (works without root); the
same with a real network namespace is in test_fault_partition.py.
"""
from __future__ import annotations

import logging
import time

from faults_tools import assert_exactly_once, check_counts, post_job, report, wait_final, wait_for

from latency_proxy import LatencyProxy
from mailjobs.dao_mysql import Dao
from runner_helpers import running

# Sends take SEND seconds at "Gmail" (TIMEOUT is the client's): the guard lets the cut-off
# worker start a send only until LEASE - TIMEOUT after its claim, so every send it starts is at
# Gmail before the other worker may take the claim over and look for it there. LEASE - TIMEOUT
# above LEASE / 2 keeps the guard's floor out of the way, and leaves the healthy worker room
# between its renewals (every LEASE / 3).
LEASE, SEND, TIMEOUT = 10, 3.0, 4.0


def claimed_by(dao: Dao, runner_id: str) -> int:
    with dao.transaction() as cur:
        cur.execute("SELECT COUNT(*) FROM job_recipients WHERE claimed_by = %s AND "
                    "status = 'sending'", (runner_id,))
        return int(cur.fetchone()[0])


def test_a_worker_cut_off_past_its_lease_does_not_race_the_one_that_took_over(
        database, dao, client, fake, gmail_settings, make_key, caplog):
    if database.server is None:
        import pytest
        pytest.skip("needs the private test server (TEST_DATABASE_URL is set)")
    key = make_key(senders=["*"])
    n = 16
    fake.send_latency = SEND
    common = dict(lease_seconds=LEASE, runner_concurrency=4, claim_batch=8,
                  in_doubt_policy="check", heartbeat_interval=0.5, gmail_timeout=TIMEOUT)
    with LatencyProxy(str(database.server.socket), 0.0) as link, \
            caplog.at_level(logging.INFO, logger="mailjobs.runner"):
        s_cut = gmail_settings.with_overrides(database_url=link.url(dao.params.database),
                                              **common)
        s_other = gmail_settings.with_overrides(**{**common, "runner_concurrency": 12})
        dao_cut, dao_other = Dao(s_cut), Dao(s_other)
        try:
            job_id = post_job(client, key, n)
            with running(s_cut, dao_cut) as (cut_off,):
                wait_for(lambda: claimed_by(dao, cut_off.id) >= 8, 30, "the first claims")
                link.cut()
                cut_at = time.monotonic()
                with running(s_other, dao_other):
                    wait_for(lambda: time.monotonic() - cut_at >= 2 * LEASE, 3 * LEASE,
                             "the cut to last 2 x LEASE_SECONDS", every=0.1)
                    link.restore()
                    status = wait_final(dao, job_id, 120)
        finally:
            dao_cut.close()
            dao_other.close()

    assert status == "completed"
    assert check_counts(client, key, dao, job_id) == {"sent": n}
    assert_exactly_once(fake, dao, job_id, n)
    # whether the guard itself trips depends on what the cut-off worker still has in hand
    # (its sending threads also need the database for the sender's credentials): reported
    held = [r for r in caplog.records if "not starting sends" in r.getMessage()]
    recovered = [r for r in caplog.records if "in-doubt send to" in r.getMessage()]
    report("cut_off_worker", recipients=n, lease=LEASE, guard_log_lines=len(held),
           recovered_by_check=len(recovered))
