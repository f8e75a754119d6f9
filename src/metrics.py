"""Prometheus metrics (prometheus-client).

Counters and histograms are per process; under gunicorn set PROMETHEUS_MULTIPROC_DIR (an empty
directory, the same for all workers of one host) and /metrics sums them over the processes. A
standalone worker serves its own on METRICS_PORT. Queue depth, the oldest queued recipient and
runner heartbeat ages are read from the database when /metrics is scraped (only by the API, so
several workers do not report them twice).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from mailjobs.states import QUEUED_RECIPIENT_STATUSES, in_order

log = logging.getLogger("mailjobs.metrics")

# METRICS_SENDER_LABELS: whether the sender label carries each address (per-tenant detail) or
# "all"; set once at start by configure().
_SENDER_LABELS = False


def configure(sender_labels: bool) -> None:
    global _SENDER_LABELS
    _SENDER_LABELS = bool(sender_labels)


def sender_label(sender: str) -> str:
    """The value of a metric's `sender` label: the address only with METRICS_SENDER_LABELS=1."""
    return sender if _SENDER_LABELS else "all"


SENDS = Counter("mailjobs_sends", "Send attempts by sender (see sender_label), result and "
                "error_code",
                ["sender", "result", "error_code"])
SEND_SECONDS = Histogram("mailjobs_send_seconds", "Time one transport send took",
                         ["transport"], buckets=(.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
ENQUEUE_SECONDS = Histogram("mailjobs_enqueue_seconds", "Time to validate and store a job",
                            buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
MAILBOX_REPORTS = Counter("mailjobs_mailbox_reports",
                          "Mailbox messages a bounce check read, by sender and outcome "
                          "(hard, soft, complaint, unmatched, mismatched, not_a_bounce, "
                          "unreadable, failed)",
                          ["sender", "outcome"])
ENQUEUED_RECIPIENTS = Counter("mailjobs_enqueued_recipients", "Recipients stored by the API")
POOL_IN_USE = Gauge("mailjobs_db_pool_in_use", "Database connections checked out of the pool",
                    multiprocess_mode="livesum")
POOL_WAIT_SECONDS = Histogram("mailjobs_db_pool_wait_seconds",
                              "Time spent waiting for a pooled database connection",
                              buckets=(.001, .005, .01, .05, .1, .5, 1, 5))
DB_CIRCUIT_OPEN = Gauge("mailjobs_db_circuit_open",
                        "1 while this process's database circuit breaker is open",
                        multiprocess_mode="max")
DB_CIRCUIT_OPENED = Counter("mailjobs_db_circuit_opened",
                            "Times the database circuit breaker opened (a timeout or a refusal)")
DB_HOST_SWITCHES = Counter("mailjobs_db_host_switches",
                           "Times new database connections moved to another host of DATABASE_URL")
DB_CONFLICTS = Counter("mailjobs_db_conflicts", "Transactions re-run after a deadlock, a lock "
                       "wait timeout or a Galera certification failure (1213/1205)", ["operation"])
WEBHOOK_DELIVERIES = Counter("mailjobs_webhook_deliveries",
                             "Webhook POST attempts by outcome (delivered; failed: retried "
                             "later; disabled: the endpoint was disabled by it)", ["outcome"])
DB_CIRCUIT_REJECTED = Counter("mailjobs_db_circuit_rejected",
                              "Database calls failed at once because the circuit was open")


class DatabaseCollector:
    """Gauges computed from the database at scrape time."""

    def __init__(self, dao: Any) -> None:   # a Dao (metrics is imported by dao_mysql)
        self.dao = dao

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depth, oldest, runners, caps = self.dao.queue_metrics()
        except Exception as exc:  # a scrape must not fail because the DB is down
            log.warning("metrics: database gauges unavailable: %s", exc)
            up = GaugeMetricFamily("mailjobs_database_up", "1 when the database answered")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("mailjobs_database_up", "1 when the database answered")
        up.add_metric([], 1)
        yield up
        queue = GaugeMetricFamily("mailjobs_queue_depth",
                                  "Recipients of active jobs by status", labels=["status"])
        for status in in_order(QUEUED_RECIPIENT_STATUSES):
            queue.add_metric([status], depth.get(status, 0))
        yield queue
        age = GaugeMetricFamily("mailjobs_oldest_queued_seconds",
                                "Age of the oldest due queued recipient of an active job")
        age.add_metric([], oldest)
        yield age
        beat = GaugeMetricFamily("mailjobs_runner_heartbeat_age_seconds",
                                 "Seconds since each runner's last heartbeat",
                                 labels=["runner", "kind", "state"])
        for r in runners:
            beat.add_metric([r["id"], r["kind"], r["state"]], r["age"])
        yield beat
        yield from learned_caps(caps)
        try:
            webhook_age = self.dao.oldest_undelivered_event_age()
        except Exception as exc:   # the same: never fail a scrape
            log.warning("metrics: webhook gauge unavailable: %s", exc)
            return
        events = GaugeMetricFamily("mailjobs_webhook_oldest_undelivered_seconds",
                                   "Age of the oldest webhook event of an enabled endpoint not "
                                   "delivered yet (0: none)")
        events.add_metric([], webhook_age)
        yield events


def learned_caps(caps: Any) -> list[GaugeMetricFamily]:
    """The caps learned from refusals (learned_limits.py): SMTP servers by host:port, Gmail
    senders by sender_label (without METRICS_SENDER_LABELS, the lowest over all senders)."""
    family = GaugeMetricFamily("mailjobs_learned_cap", "Concurrency cap in effect after the "
                               "far side refused (kind smtp: connections to target host:port; "
                               "gmail: concurrent sends of the sender); the configured value "
                               "is mailjobs_learned_cap_configured",
                               labels=["kind", "target"])
    configured = GaugeMetricFamily("mailjobs_learned_cap_configured", "The configured cap of "
                                   "each mailjobs_learned_cap", labels=["kind", "target"])
    shown: dict[tuple[str, str], tuple[int, int]] = {}
    for c in caps:
        label = (c.kind, c.target if c.kind == "smtp" else sender_label(c.target))
        cap = min(c.cap, c.configured)
        if label not in shown or cap < shown[label][0]:
            shown[label] = (cap, c.configured)
    for label, (cap, conf) in sorted(shown.items()):
        family.add_metric(list(label), cap)
        configured.add_metric(list(label), conf)
    return [family, configured]


def render(dao: Any) -> tuple[bytes, str]:
    """This process's metrics (every process's under PROMETHEUS_MULTIPROC_DIR), then the
    database gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        processes = CollectorRegistry()
        MultiProcessCollector(processes)  # type: ignore[no-untyped-call]
    else:
        processes = REGISTRY
    database = CollectorRegistry()
    if dao is not None:
        database.register(DatabaseCollector(dao))
    return generate_latest(processes) + generate_latest(database), CONTENT_TYPE_LATEST


def serve_worker_metrics(port: int, addr: str) -> None:
    """A standalone worker's own /metrics (its counters; no database gauges)."""
    if port:
        start_http_server(port, addr=addr)
        log.info("worker metrics on http://%s:%d/metrics", addr, port)
