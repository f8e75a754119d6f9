"""POST /api/jobs/send_template_emails: a request becomes a stored job (enqueue.py decides),
answered 202 with its first status, warnings and estimate.

Large bodies (over LARGE_BODY_BYTES) are stored LARGE_ENQUEUE_CONCURRENCY at a time per app;
the others wait for a slot, then get 503 busy.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from mailjobs import estimates, metrics
from mailjobs.dao_mysql import Also, DatabaseUnavailable
from mailjobs.db import guard as db_guard
from mailjobs.enqueue import (
    RecipientSource,
    RequestRejected,
    enqueue,
    replay_or_conflict,
    request_hash,
    split_body,
)
from mailjobs.memory import release_free_memory
from mailjobs.records import Job, SenderPlan
from mailjobs.web.errors import error_response
from mailjobs.web.inputs import parse_body, read_body, require_json, validation_errors
from mailjobs.web.schemas import EnqueueOut, SendTemplateEmailsIn
from mailjobs.web.state import api_key, app_state, get_settings, get_store, work_added

log = logging.getLogger("mailjobs.api")
bp = Blueprint("send", __name__)
EXTENSION = "mailjobs.send"


@dataclass
class _Senders:
    """This app's own: the slots of large bodies, and when live runners were last seen."""
    large_slots: threading.BoundedSemaphore
    live_seen: float = field(default=float("-inf"))   # monotonic


@bp.record_once
def _per_app(setup: BlueprintSetupState) -> None:
    settings = app_state(setup.app)["settings"]
    setup.app.extensions[EXTENSION] = _Senders(
        threading.BoundedSemaphore(max(1, settings.large_enqueue_concurrency)))


def _senders() -> _Senders:
    own: _Senders = current_app.extensions[EXTENSION]
    return own


@bp.post("/api/jobs/send_template_emails")
def send_template_emails() -> Response:
    require_json()
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not 1 <= len(idem) <= 255:
        raise RequestRejected(400, "validation_error", "Idempotency-Key must be 1-255 characters",
                              [("Idempotency-Key", "must be 1-255 characters")])
    settings = get_settings()
    slots = _senders().large_slots
    large = (request.content_length or 0) > settings.large_body_bytes
    if large and not slots.acquire(timeout=6 * settings.db_pool_timeout):
        response = error_response(503, "busy", "too many large jobs are being stored at "
                                  "once; nothing was stored, retry shortly")
        response.headers["Retry-After"] = "5"
        return response
    try:
        return _send_template_emails(idem)
    finally:
        if large:
            slots.release()
            release_free_memory()


def _send_template_emails(idem: str | None) -> Response:
    dao, settings, key = get_store(), get_settings(), api_key()
    # hashlib and msgspec read any buffer: the bytearray is not copied into bytes
    body = cast(bytes, read_body())
    body_hash = request_hash(body)
    if idem:
        replay = replay_or_conflict(dao, key, idem, body_hash)
        if replay is not None:
            return _enqueued(replay.job, replayed=True)
    context = {"max_recipients": settings.max_recipients_per_job,
               "metadata_max_bytes": settings.metadata_max_bytes}
    parts = split_body(body)
    if parts is None:   # not the usual shape (or not JSON): validated whole, as it says
        req = parse_body(SendTemplateEmailsIn, body, context)
        recipients = RecipientSource.parsed(req.recipients, validation_errors)
    else:   # the job's fields now; its recipients a chunk at a time while they are stored
        head, raws = parts
        req = parse_body(SendTemplateEmailsIn, head, {**context, "recipients_count": len(raws)})
        recipients = RecipientSource.raw(raws, validation_errors, context)

    def check_total(total: int) -> None:
        if key.may_send_as(req.sender_email):   # else enqueue answers 403 first
            estimates.check_max_duration(dao, settings, req, unlimited=key.is_test, total=total)

    with metrics.ENQUEUE_SECONDS.time():
        result = enqueue(dao, key, req, body_hash, idem,
                         unsubscribe_base_url=settings.unsubscribe_base_url,
                         settings=settings, body_size=len(body), recipients=recipients,
                         check_total=check_total if req.max_duration is not None else None,
                         also=Also(plan=not key.is_test, live_runners_age=None
                                   if _runners_seen() else settings.runner_stale_after))
    if not result.replayed:
        metrics.ENQUEUED_RECIPIENTS.inc(result.job.total)
        work_added()
    return _enqueued(result.job, replayed=result.replayed, suppressed=result.suppressed,
                     plan=result.plan, live=result.live_runners)


def _runners_seen() -> bool:
    return time.monotonic() - _senders().live_seen < get_settings().heartbeat_interval


def _live_runners(known: int | None = None) -> int:
    """Live runners, for the answer's warning: once some were seen, not read again for a
    HEARTBEAT_INTERVAL (a runner stays live for 3 of them; a round trip saved per POST).
    `known`: read already (in the transaction that stored the job)."""
    settings, own = get_settings(), _senders()
    if _runners_seen():
        return 1
    n = len(get_store().live_runners(settings.runner_stale_after)) if known is None else known
    if n:
        own.live_seen = time.monotonic()
    return n


def _warnings(live: int | None = None) -> list[str]:
    settings, key = get_settings(), api_key()
    warnings = []
    if key.is_test:
        warnings.append("test key: this job runs without sender limits and sends no mail ("
                        + (f"messages are written to {settings.outbox_dir}"
                           if key.test_mode == "outbox" else "messages are discarded") + ")")
    if app_state()["runs_runner"] and settings.transport_name in ("outbox", "null"):
        warnings.append(f"MAIL_TRANSPORT is {settings.transport_name}: this server's runner "
                        "sends no mail" + (f" (messages are written to {settings.outbox_dir})"
                                           if settings.transport_name == "outbox" else ""))
    if _live_runners(live) == 0:
        warnings.append("no live runner: the job is stored and will wait until a runner "
                        "(embedded, or `mailjobs worker`) is running")
    return warnings


def _enqueued(job: Job, replayed: bool, suppressed: int | None = None,
              plan: SenderPlan | None = None,
              live: int | None = None) -> Response:
    warnings = _warnings(live)
    if suppressed is None:   # a replay: read it
        suppressed = get_store().suppressed_count(job.id)
    first_status = ("completed" if suppressed == job.total  # nothing to send (Dao.create_job)
                    else "scheduled" if job.send_at is not None else "queued")
    estimate = _stored_job_estimate(job, suppressed, replayed, warnings, plan)
    body = EnqueueOut.model_validate(dict(
        job_id=job.id, status=first_status, recipients=job.total,
        duplicates_removed=job.duplicates_removed, suppressed=suppressed,
        status_url=f"/api/jobs/{job.id}", warnings=warnings, estimate=estimate,
        test=api_key().is_test))
    response = jsonify(body.model_dump(mode="json"))
    response.status_code = 202
    response.headers["Location"] = f"/api/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _stored_job_estimate(job: Job, suppressed: int, replayed: bool, warnings: list[str],
                         plan: SenderPlan | None = None
                         ) -> dict[str, Any] | None:
    """The estimate of a job just stored (or replayed), under a deadline of its own: the job is
    committed, so a slow database costs the estimate (a warning says so), never the 202 (a
    client seeing 503 would post the job again)."""
    dao, settings = get_store(), get_settings()
    db_guard.start_deadline(settings.db_request_deadline)
    try:
        test = api_key().is_test
        estimate = (estimates.for_job(dao, settings, dao.job(job.id, with_counts=True) or job,
                                      unlimited=test)
                    if replayed else estimates.for_job(dao, settings, job, suppressed,
                                                       unlimited=test, known=plan))
    except DatabaseUnavailable as exc:
        log.warning("job=%d stored; no estimate: %s", job.id, exc)
        warnings.append("no estimate: the database did not answer in time; see GET "
                        f"/api/jobs/{job.id} later")
        return None
    slow = estimate and estimates.warning(estimate, job.sender_email, settings.warn_days)
    if slow:
        warnings.append(slow)
    return estimate
