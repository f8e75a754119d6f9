"""/metrics in Prometheus format: scraped and parsed after real sends."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner_helpers import fast, running, wait_job_done
from test_api_enqueue import body, post


def scrape(client, key: str) -> dict[str, list]:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    assert r.content_type.startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.get_data(as_text=True))}


def value(samples, name, **labels) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture()
def op_key(make_key) -> str:
    return make_key(operator=True, name="prometheus")


def test_metrics_count_sends_enqueues_queue_and_runners(client, key, op_key, dao, tmp_path):
    before = scrape(client, op_key)
    sent_before = value(before.get("mailjobs_sends", []), "mailjobs_sends_total",
                        sender="all", result="sent")
    b = body(4)
    b["template"]["text"] = "{{ n + 1 }}"
    b["recipients"][0]["variables"] = {"n": "x"}   # one template_error
    job_id = post(client, key, b).json["job_id"]
    queued = scrape(client, op_key)
    assert value(queued["mailjobs_queue_depth"], "mailjobs_queue_depth", status="queued") == 4
    assert value(queued["mailjobs_enqueue_seconds"], "mailjobs_enqueue_seconds_count") >= 1
    assert value(queued["mailjobs_database_up"], "mailjobs_database_up") == 1
    s = fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "out"))
    with running(s, dao) as (runner,):
        wait_job_done(dao, job_id)
        live = scrape(client, op_key)
        ages = [x for x in live["mailjobs_runner_heartbeat_age_seconds"]
                if x.labels["runner"] == runner.id]
        assert len(ages) == 1 and 0 <= ages[0].value < 5
    after = scrape(client, op_key)
    sends = after["mailjobs_sends"]
    assert value(sends, "mailjobs_sends_total", sender="all", result="sent") - sent_before == 3
    # no tenant's sender address is in the metrics unless METRICS_SENDER_LABELS=1
    assert "ops@example.com" not in client.get(
        "/metrics", headers={"X-API-Key": op_key}).get_data(as_text=True)
    assert value(sends, "mailjobs_sends_total", result="failed", error_code="template_error") >= 1
    assert value(after["mailjobs_send_seconds"], "mailjobs_send_seconds_count",
                 transport="outbox") >= 3
    assert value(after["mailjobs_queue_depth"], "mailjobs_queue_depth", status="queued") == 0
    assert "mailjobs_db_pool_wait_seconds" in after
    assert "mailjobs_db_pool_in_use" in after


def test_metrics_need_an_operator_key(client, key, op_key):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer mj_nope_nope"}
                      ).status_code == 401
    tenant = client.get("/metrics", headers={"X-API-Key": key})
    assert tenant.status_code == 403 and tenant.json["error"] == "operator_only"
    assert client.get("/metrics", headers={"X-API-Key": op_key}).status_code == 200


def test_sender_labels_only_when_configured(dao, database, key, tmp_path, make_key):
    from mailjobs import metrics
    from mailjobs.api_server import create_app

    op = make_key(operator=True, name="prometheus")
    labelled = create_app(dao.settings.with_overrides(metrics_sender_labels=True), dao)
    try:
        client = labelled.test_client()
        job_id = post(client, key, body(1)).json["job_id"]
        s = fast(dao.settings, mail_transport="outbox", outbox_dir=str(tmp_path / "out"))
        with running(s, dao):
            wait_job_done(dao, job_id)
        sends = scrape(client, op)["mailjobs_sends"]
        assert value(sends, "mailjobs_sends_total", sender="ops@example.com", result="sent") >= 1
    finally:
        metrics.configure(False)


def test_metrics_answer_while_the_database_is_down(client, database, op_key):
    if database.server is None:
        pytest.skip("needs the private test server")
    scrape(client, op_key)          # Prometheus scraped before: its key is known to be good
    database.server.stop()
    try:
        samples = scrape(client, op_key)
        assert value(samples["mailjobs_database_up"], "mailjobs_database_up") == 0
    finally:
        database.server.start()
