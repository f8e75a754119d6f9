"""What operators and their tools read: runners and senders (operator keys), /healthz (no key),
/metrics (an operator key, also as `Authorization: Bearer`), /openapi.json.

/healthz, /metrics and /openapi.json are the fast lane's (web/lanes.py): their database work is
bounded by HEALTHZ_DB_TIMEOUT or absent, so they answer while the main threads wait on it.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from mailjobs import metrics
from mailjobs.dao_mysql import DatabaseUnavailable
from mailjobs.db import guard as db_guard
from mailjobs.records import ApiKey
from mailjobs.web.auth import operator_only
from mailjobs.web.errors import error_response
from mailjobs.web.openapi import openapi_document
from mailjobs.web.state import app_state, get_settings, get_store
from mailjobs.web.views import learned_caps_view, runner_view, sender_view

bp = Blueprint("operators", __name__)
SCRAPER_GRACE = 600.0   # seconds an operator key that read /metrics still may while the DB is down
EXTENSION = "mailjobs.operators"


@bp.record_once
def _per_app(setup: BlueprintSetupState) -> None:
    # this app's scrapers: SHA-256 of an operator key -> when it was last verified (monotonic)
    setup.app.extensions[EXTENSION] = {}


@bp.get("/api/runners")
def list_runners() -> Response:
    operator_only()
    stale = get_settings().runner_stale_after
    return jsonify({"runners": [runner_view(r, stale) for r in get_store().runners(100)]})


@bp.get("/api/senders")
def list_senders() -> Response:
    operator_only()
    dao, settings = get_store(), get_settings()
    limits = (settings.sender_rate_per_minute, settings.sender_daily_cap)
    return jsonify({"senders": [sender_view(r, dao.sender_sends_24h(r["email"]), limits)
                                for r in dao.senders()],
                    "learned_caps": learned_caps_view(dao.learned_caps())})


@bp.get("/healthz")
def healthz() -> Response:
    settings = get_settings()
    # Its own connection and timeout (HEALTHZ_DB_TIMEOUT): never behind the pool.
    database, live, detail = get_store().health(settings.healthz_db_timeout,
                                                settings.runner_stale_after)
    body: dict[str, Any] = {"status": "ok", "database": database,
                            "transport": settings.transport_name}
    if database != "ok" or live is None:
        body.update(status="unavailable", reason=f"database {database}: {detail}")
        return _status(body, 503)
    body["runners"] = live
    needed = max(settings.expect_runners, 1 if app_state()["runs_runner"] else 0)
    if live < needed:
        body.update(status="unavailable", reason=(
            f"{live} runner(s) with a heartbeat in the last "
            f"{settings.runner_stale_after:.0f} s, {needed} expected: jobs are not being sent"))
        return _status(body, 503)
    return jsonify(body)


def _status(body: dict[str, Any], status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    # Operators only: X-API-Key, or `Authorization: Bearer KEY` (Prometheus' own setting).
    bearer = request.headers.get("Authorization", "")
    presented = request.headers.get("X-API-Key") or (
        bearer[7:].strip() if bearer[:7].lower() == "bearer " else "")
    if not presented:
        return error_response(401, "unauthorized", "/metrics needs an operator API key in "
                              "X-API-Key or Authorization: Bearer", [("X-API-Key", "missing")])
    digest = hashlib.sha256(presented.encode()).hexdigest()
    recent_scrapers: dict[str, float] = current_app.extensions[EXTENSION]
    dao = get_store()
    # the key check and the gauges together wait for the database HEALTHZ_DB_TIMEOUT at most:
    # a scrape says the database is down instead of timing out itself
    with db_guard.deadline(get_settings().healthz_db_timeout):
        try:
            scraper = app_state()["verifier"].verify(presented)
        except DatabaseUnavailable:
            # an operator key verified in the last SCRAPER_GRACE seconds may still read it
            if time.monotonic() - recent_scrapers.get(digest, float("-inf")) > SCRAPER_GRACE:
                raise
            body, content_type = metrics.render(dao)
            return Response(body, content_type=content_type)
        if scraper is None or not scraper.is_operator:
            return _refused_scraper(scraper)
        recent_scrapers[digest] = time.monotonic()
        body, content_type = metrics.render(dao)
    return Response(body, content_type=content_type)


def _refused_scraper(scraper: ApiKey | None) -> Response:
    if scraper is None:
        return error_response(401, "unauthorized", "the API key is unknown or revoked",
                              [("X-API-Key", "unknown or revoked")])
    return error_response(403, "operator_only", "this needs an operator API key",
                          [("X-API-Key", "not an operator key")])


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
