"""Scenario 2: MariaDB stops mid-job and starts again. The worker processes and the API live
through it (the API answers 503 JSON, /healthz is red), then the job finishes with nothing lost
and nothing sent twice."""
from __future__ import annotations

import time

import pytest
from faults_tools import (
    assert_exactly_once,
    check_counts,
    duration,
    h,
    job_body,
    post_job,
    report,
    sends_of_job,
    size,
    wait_final,
    wait_for,
)

WORKERS = 3


@pytest.fixture()
def stoppable(database):
    if database.server is None:
        pytest.skip("needs the private test server (TEST_DATABASE_URL is set)")
    yield database.server
    database.server.start()  # whatever happened, leave a running server behind


def test_database_down_mid_job(client, key, dao, fake, fleet, stoppable):
    n, down = size(600), duration(8)
    fake.send_latency = 0.1
    job_id = post_job(client, key, n)
    started = time.monotonic()
    fleet.start_many(WORKERS)
    wait_for(lambda: len(sends_of_job(fake, job_id)) >= n // 4, 60 + n / 10, "a quarter sent")

    sent_before = fake.count()
    stoppable.stop()
    stopped = time.monotonic()
    answers = []
    try:
        while time.monotonic() - stopped < down:
            t = time.monotonic()
            job = client.get(f"/api/jobs/{job_id}", headers=h(key))
            health = client.get("/healthz")
            posted = client.post("/api/jobs/send_template_emails", json=job_body(2, "late"),
                                 headers=h(key))
            answers.append((job.status_code, health.status_code, posted.status_code,
                            time.monotonic() - t))
            assert job.status_code == 503 and job.json["error"] == "database_unavailable"
            assert job.headers["Retry-After"]
            assert health.status_code == 503 and health.json["database"] == "refused"
            assert posted.status_code == 503 and posted.json["error"] == "database_unavailable"
            assert not fleet.exited(), f"a worker died with the database: {fleet.exited()}"
            time.sleep(0.5)
        sent_while_down = fake.count() - sent_before
    finally:
        stoppable.start()
    restarted = time.monotonic()

    wait_for(lambda: client.get("/healthz").status_code == 200, 30, "/healthz green again")
    assert client.get(f"/api/jobs/{job_id}", headers=h(key)).status_code == 200
    status = wait_final(dao, job_id, 60 + n / 10, fleet)
    finished = time.monotonic()
    assert not fleet.exited(), f"workers exited by themselves: {fleet.exited()}"
    fleet.stop_all_cleanly()

    counts = check_counts(client, key, dao, job_id)
    sends = sends_of_job(fake, job_id)
    backoffs = len(fleet.grep("database unavailable"))
    report("database_outage", recipients=n, down_seconds=round(restarted - stopped, 1),
           seconds=round(finished - started, 1),
           recovery_seconds=round(finished - restarted, 1), status=status, counts=counts,
           messages=sum(sends.values()), sent_while_down=sent_while_down,
           api_checks_while_down=len(answers),
           slowest_api_answer_while_down=round(max(a[3] for a in answers), 2),
           worker_backoff_log_lines=backoffs,
           recovered_by_check=len(fleet.grep("in-doubt send to")))
    assert answers and max(a[3] for a in answers) < 10   # 503 quickly, never a hang
    assert backoffs > 0, "the workers never noticed the outage"
    assert status == "completed"
    assert counts == {"sent": n}
    assert_exactly_once(fake, dao, job_id, n)
