"""The deployment of deploy/: gunicorn (2 processes, prometheus multiprocess mode) for the API
and two `mailjobs worker` processes, all on one database, as the README's topology describes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from mailjobs.api_keys import create_key
from runner_helpers import wait_for
from test_serve_process import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def metric(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name)


def test_gunicorn_api_and_two_workers_send_a_job_together(dao, database, tmp_path):
    port = free_port()
    worker_ports = [free_port(), free_port()]
    key = create_key(dao, "deploy-test", ["*"]).key
    scraper = create_key(dao, "prometheus", [], operator=True).key   # /metrics: operators only
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    # what an earlier run of the API left in the directory: gunicorn.conf.py must empty it
    subprocess.run([sys.executable, "-c", "from mailjobs import metrics; "
                    "metrics.ENQUEUED_RECIPIENTS.inc(1000)"], check=True,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)})
    assert list(multiproc.glob("*.db"))
    base_env = {**os.environ, "DATABASE_URL": database.url, "MAIL_TRANSPORT": "outbox",
                "OUTBOX_DIR": str(tmp_path / "outbox"), "SENDER_RATE_PER_MINUTE": "0",
                "SENDER_DAILY_CAP": "0", "POLL_INTERVAL": "0.1", "HEARTBEAT_INTERVAL": "0.5",
                "CLAIM_BATCH": "20"}
    api_env = {**base_env, "PORT": str(port), "WEB_CONCURRENCY": "2", "EMBEDDED_RUNNER": "0",
               "EXPECT_RUNNERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    logs = [open(tmp_path / f"{name}.log", "w") for name in ("api", "w1", "w2")]
    procs = [subprocess.Popen([str(BIN / "gunicorn"), "-c", str(ROOT / "deploy/gunicorn.conf.py"),
                               "mailjobs.web.wsgi:app"], env=api_env, stdout=logs[0],
                              stderr=subprocess.STDOUT)]
    for i, wport in enumerate(worker_ports):
        procs.append(subprocess.Popen([str(BIN / "mailjobs"), "worker"],
                                      env={**base_env, "METRICS_PORT": str(wport)},
                                      stdout=logs[i + 1], stderr=subprocess.STDOUT))
    base = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            try:
                r = requests.get(f"{base}/healthz", timeout=2)
                return r.status_code == 200 and r.json()["runners"] == 2
            except requests.RequestException:  # not listening yet, or still importing
                return False
        wait_for(healthy, 40, every=0.2, message="gunicorn healthy with 2 live workers")
        job = {"sender_email": "news@example.com",
               "template": {"subject": "Hi {{ name }}", "text": "Hello {{ name }}"},
               "recipients": [{"email": f"u{i}@example.com", "name": f"U{i}"}
                              for i in range(200)]}
        ids = [requests.post(f"{base}/api/jobs/send_template_emails", json=job, timeout=10,
                             headers={"X-API-Key": key}).json()["job_id"] for _ in range(3)]
        for job_id in ids:
            wait_for(lambda j=job_id: dao.job(j).status == "completed", 60,
                     message=f"job {job_id} completed")
        assert len(list((tmp_path / "outbox").rglob("*.eml"))) == 600
        # the API's metrics add up over both gunicorn processes, whichever answers the scrape,
        # and nothing of the earlier run's 1000 is counted
        for _ in range(4):
            text = requests.get(f"{base}/metrics", timeout=5,
                                headers={"Authorization": f"Bearer {scraper}"}).text
            assert metric(text, "mailjobs_enqueued_recipients_total") == 600
        sends = [metric(requests.get(f"http://127.0.0.1:{p}/metrics", timeout=5).text,
                        "mailjobs_sends_total") for p in worker_ports]
        assert sum(sends) == 600 and all(n > 0 for n in sends), sends
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            log.close()
    assert [p.returncode for p in procs] == [0, 0, 0], \
        [(tmp_path / f"{n}.log").read_text()[-2000:] for n in ("api", "w1", "w2")]
