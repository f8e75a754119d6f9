"""gunicorn settings for the mailjobs API: `gunicorn -c deploy/gunicorn.conf.py mailjobs.web.wsgi:app`.

Each worker process opens its own DB pool (DB_POOL_SIZE connections at most), so the database
must allow workers x DB_POOL_SIZE connections per API host, plus the runners'.
"""
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("HTTP_THREADS", "8"))
# gthread with a second small thread pool for /healthz, /metrics and /openapi.json, so they answer
# while every HTTP thread waits on a database that does not answer (src/web/gunicorn_worker.py)
worker_class = "mailjobs.web.gunicorn_worker.LaneThreadWorker"
# A 100,000-recipient POST takes a few seconds; nothing legitimate takes a minute.
timeout = 60
graceful_timeout = 30
keepalive = 5
# the project directory: .env and var/ are found from there
chdir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
accesslog = "-"
errorlog = "-"


def on_starting(server):
    """prometheus-client multiprocess mode: the directory must start empty, or the counters of
    the last run's processes (same pids, reused) are added to this run's."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.unlink(os.path.join(folder, name))


def child_exit(server, worker):
    """prometheus-client multiprocess mode: forget a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
