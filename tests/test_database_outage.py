"""The database stops mid-test: the API answers 503 JSON quickly, then recovers by itself."""
from __future__ import annotations

import time

import pytest

from test_api_enqueue import body, post


@pytest.fixture()
def stoppable(database):
    if database.server is None:
        pytest.skip("needs the private test server (TEST_DATABASE_URL is set)")
    yield database.server
    database.server.start()  # whatever the test did, leave a running server behind


def test_api_answers_503_json_while_the_database_is_down_and_recovers(client, key, dao, stoppable):
    job_id = post(client, key, body(2)).json["job_id"]
    stoppable.stop()

    started = time.monotonic()
    r = post(client, key, body(2))
    elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert r.json["error"] == "database_unavailable"
    assert r.json["message"]
    assert r.headers["Retry-After"]
    assert elapsed < 10
    assert client.get(f"/api/jobs/{job_id}", headers={"X-API-Key": key}).status_code == 503
    health = client.get("/healthz")
    assert (health.status_code, health.json["database"]) == (503, "refused")

    stoppable.start()
    assert client.get("/healthz").status_code == 200
    r = post(client, key, body(2))
    assert r.status_code == 202
    assert client.get(f"/api/jobs/{r.json['job_id']}", headers={"X-API-Key": key}).json["total"] == 2
