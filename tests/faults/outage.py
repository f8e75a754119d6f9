"""The outage scenario shared by the frozen-database and the partition tests.

The API is served for real (waitress with its two lanes) with a runner thread in the same
process, sharing the Dao and its circuit breaker, as `mailjobs serve` runs them. While the
database does not answer: every endpoint answers 503 JSON within DB_REQUEST_DEADLINE + 1 s
(on a process of its own each, cold pool and closed breaker, and through the served app),
/healthz within 2 s saying "timeout" (also while all main threads are stuck), /openapi.json and
/metrics keep answering, 20 concurrent requests are all answered within the deadline + 1 s.
Afterwards: normal service within 5 s, the job finishes with every recipient sent once, and
the breaker's opening and closing were logged once each.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from faults_tools import (
    assert_exactly_once,
    check_counts,
    h,
    job_body,
    post_job,
    report,
    sends_of_job,
    size,
    wait_final,
    wait_for,
)

from mailjobs.api_server import create_app
from mailjobs.dao_mysql import Dao
from runner_helpers import running
from served import served, timed

DEADLINE = 3.0
THREADS = 8


def _endpoints(job_id: int) -> list[tuple[str, str, dict]]:
    """(method, path, extra request arguments) of every kind of API call that needs the DB."""
    return [
        ("GET", f"/api/jobs/{job_id}", {}),
        ("POST", "/api/jobs/send_template_emails", {"json": job_body(1, "late")}),
        ("GET", "/api/jobs", {}),
        ("GET", f"/api/jobs/{job_id}/recipients?limit=5", {}),
        ("GET", "/api/recipients?email=u00001@example.com", {}),
        ("POST", f"/api/jobs/{job_id + 1000}/pause", {}),
        ("GET", "/api/templates", {}),
        ("GET", "/api/suppressions", {}),
        ("POST", "/api/suppressions", {"json": {"email": "x@example.com"}}),
        ("GET", "/api/runners", {}),
        ("GET", "/api/senders", {}),
    ]


def outage_mid_job(name: str, settings, dao: Dao, key: str, fake, fault, caplog,
                   fault_seconds: float) -> None:
    """The scenario: a 200-recipient job, the fault (`fault.freeze()` ... `fault.thaw()`) for
    `fault_seconds` once a quarter is sent, then the expectations of the module docstring.
    `settings` is the service's (its DATABASE_URL goes through the fault); `dao` observes
    and checks (not through the fault)."""
    settings = settings.with_overrides(db_request_deadline=DEADLINE, http_threads=THREADS,
                                       in_doubt_policy="check", lease_seconds=60)
    service = Dao(settings)   # one Dao per process: API threads and the runner share it
    n, frozen_for = size(200), max(fault_seconds, settings.db_read_timeout + 2)
    fake.send_latency = 0.05
    app = create_app(settings, service, runs_runner=True)
    try:
        with served(app, THREADS) as base, running(settings, service):
            client = app.test_client()
            job_id = post_job(client, key, n)
            wait_for(lambda: len(sends_of_job(fake, job_id)) >= n // 4, 60, "a quarter sent")

            # /metrics needs an operator key; one that scraped shortly before may still scrape
            # while the database is down (it cannot be checked then)
            assert timed("GET", base + "/metrics", headers=h(key))[0] == 200
            # the cold apps (one per endpoint: a cold pool, a closed breaker) are built now, one
            # after the other: Flask's route compiling (ast.parse) in many threads at once trips
            # CPython 3.11's "AST constructor recursion depth mismatch"
            cold_daos: list[Dao] = []
            cold_apps = []
            for endpoint in _endpoints(job_id):
                own = Dao(settings)
                cold_daos.append(own)
                cold_apps.append((endpoint, create_app(settings, own).test_client()))
            fault.freeze()
            frozen_at = time.monotonic()
            try:
                # 20 concurrent requests at once, on a freshly frozen server (breaker closed,
                # warm pooled connections): 8 threads wait on the database, 12 are queued
                def one(i: int):
                    method, path, kw = _endpoints(job_id)[i % 3]
                    return timed(method, base + path, headers=h(key), **kw)
                with ThreadPoolExecutor(20) as pool:
                    burst = list(pool.map(one, range(20)))
                # every endpoint on a process of its own (a cold pool, a closed breaker: the
                # deadline alone bounds connect, handshake and statements), all at once
                def cold(item):
                    (method, path, kw), c = item
                    started = time.monotonic()
                    r = c.open(path, method=method, headers=h(key), **kw)
                    return r.status_code, r.json, dict(r.headers), time.monotonic() - started
                with ThreadPoolExecutor(len(cold_apps)) as pool:
                    cold_sweep = list(zip(_endpoints(job_id), pool.map(cold, cold_apps), strict=True))
                # every endpoint, one after the other, through the served app
                sweep = [(m, p, timed(m, base + p, headers=h(key), **kw))
                         for m, p, kw in _endpoints(job_id)]
                health = timed("GET", base + "/healthz")
                doc = timed("GET", base + "/openapi.json")
                prom = timed("GET", base + "/metrics", headers=h(key))
                # /healthz while all 8 main threads are stuck on the database
                with ThreadPoolExecutor(THREADS) as pool:
                    stuck = [pool.submit(timed, "GET", f"{base}/api/jobs/{job_id}",
                                         headers=h(key)) for _ in range(THREADS)]
                    health_busy = timed("GET", base + "/healthz")
                    stuck = [f.result() for f in stuck]
                wait_for(lambda: time.monotonic() - frozen_at >= frozen_for, frozen_for + 5,
                         "the freeze to last longer than every timeout", every=0.2)
                sent_while_frozen = fake.count()
            finally:
                fault.thaw()
            thawed_at = time.monotonic()
            wait_for(lambda: timed("GET", f"{base}/api/jobs/{job_id}", headers=h(key))[0] == 200,
                     10, "normal service after the fault", every=0.1)
            back_after = time.monotonic() - thawed_at
            status = wait_final(dao, job_id, 120)
    finally:
        service.close()
        for own in locals().get("cold_daos", []):
            own.close()

    for status_code, body, headers, elapsed in burst + stuck:
        assert status_code == 503 and body["error"] == "database_unavailable", body
        assert int(headers["Retry-After"]) >= 1
        assert elapsed <= DEADLINE + 1, elapsed
    for (method, path, _), (status_code, body, _headers, elapsed) in cold_sweep:
        assert status_code == 503, (method, path, status_code, body)
        assert body["error"] == "database_unavailable", (method, path, body)
        assert elapsed <= DEADLINE + 1, (method, path, elapsed)
    for method, path, (status_code, body, headers, elapsed) in sweep:
        assert status_code == 503, (method, path, status_code, body)
        assert body["error"] == "database_unavailable" and body["message"], (method, path)
        assert headers["Retry-After"], (method, path)
        assert elapsed <= DEADLINE + 1, (method, path, elapsed)
    for code, body, _, elapsed in (health, health_busy):
        assert code == 503 and body["database"] == "timeout", body
        assert elapsed < 2, elapsed
    assert doc[0] == 200 and doc[1]["openapi"].startswith("3.1") and doc[3] < 2
    assert prom[0] == 200 and prom[3] < 2
    assert "mailjobs_database_up 0.0" in prom[1] and "mailjobs_db_circuit_open 1.0" in prom[1]
    assert back_after <= 5, back_after
    # the shared breaker opened once and closed once, each logged once (not per request)
    assert service.breaker.opened_count == 1, [(r.relativeCreated, r.getMessage()[:150]) for r in caplog.records if "circuit" in r.getMessage()]
    opened = [r for r in caplog.records if r.getMessage().startswith("database circuit open")]
    closed = [r for r in caplog.records if r.getMessage().startswith("database circuit closed")]
    assert len(opened) == 1 + len(cold_daos) and len(closed) == 1, (len(opened), len(closed))
    assert status == "completed"
    counts = check_counts(app.test_client(), key, dao, job_id)
    assert counts == {"sent": n}
    assert_exactly_once(fake, dao, job_id, n)
    report(name, recipients=n, frozen_seconds=round(thawed_at - frozen_at, 1),
           burst_p100=round(max(b[3] for b in burst), 2),
           cold_sweep_p100=round(max(c[1][3] for c in cold_sweep), 2),
           sweep_p100=round(max(s[2][3] for s in sweep), 2),
           healthz_seconds=round(max(health[3], health_busy[3]), 2),
           normal_service_after_thaw=round(back_after, 2), sent_while_frozen=sent_while_frozen)

