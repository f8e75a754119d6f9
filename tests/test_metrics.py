"""/metrics in Prometheus format: scraped and parsed after real sends."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from runner_helpers import fast, running, wait_job_done
from test_api_enqueue import body, post


def scrape(client) -> dict[str, list]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.get_data(as_text=True))}


def value(samples, name, **labels) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_sends_enqueues_queue_and_runners(client, key, dao, tmp_path):
    before = scrape(client)
    sent_before = value(before.get("mailjobs_sends", []), "mailjobs_sends_total",
                        sender="ops@example.com", result="sent")
    b = body(4)
    b["template"]["text"] = "{{ n + 1 }}"
    b["recipients"][0]["variables"] = {"n": "x"}   # one template_error
    job_id = post(client, key, b).json["job_id"]
    queued = scrape(client)
    assert value(queued["mailjobs_queue_depth"], "mailjobs_queue_depth", status="queued") == 4
    assert value(queued["mailjobs_enqueue_seconds"], "mailjobs_enqueue_seconds_count") >= 1
    assert value(queued["mailjobs_database_up"], "mailjobs_database_up") == 1
    s = fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "out"))
    with running(s, dao) as (runner,):
        wait_job_done(dao, job_id)
        live = scrape(client)
        ages = [x for x in live["mailjobs_runner_heartbeat_age_seconds"]
                if x.labels["runner"] == runner.id]
        assert len(ages) == 1 and 0 <= ages[0].value < 5
    after = scrape(client)
    sends = after["mailjobs_sends"]
    assert value(sends, "mailjobs_sends_total", sender="ops@example.com",
                 result="sent") - sent_before == 3
    assert value(sends, "mailjobs_sends_total", result="failed", error_code="template_error") >= 1
    assert value(after["mailjobs_send_seconds"], "mailjobs_send_seconds_count",
                 transport="outbox") >= 3
    assert value(after["mailjobs_queue_depth"], "mailjobs_queue_depth", status="queued") == 0
    assert "mailjobs_db_pool_wait_seconds" in after
    assert "mailjobs_db_pool_in_use" in after


def test_metrics_answer_while_the_database_is_down(client, database):
    if database.server is None:
        import pytest
        pytest.skip("needs the private test server")
    database.server.stop()
    try:
        samples = scrape(client)
        assert value(samples["mailjobs_database_up"], "mailjobs_database_up") == 0
    finally:
        database.server.start()
