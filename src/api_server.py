"""The Flask app: routes, authentication and the one JSON error shape.

`create_app(settings, dao)` is the factory (flaskr's habit); `python src/api_server.py` starts
the whole service as `mailjobs serve` does.
"""
from __future__ import annotations

if __name__ == "__main__":   # `python src/api_server.py`: stop signals handled before the imports
    from mailjobs import entry

    entry.install()

import ctypes
import ctypes.util
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import ClientDisconnected, HTTPException

from mailjobs import defaults, estimates, export, job_control, metrics
from mailjobs.api_keys import KeyVerifier
from mailjobs.dao_mysql import Also, Dao, DatabaseUnavailable
from mailjobs.db import guard as db_guard
from mailjobs.deliverability.addresses import InvalidAddress, normalize_address
from mailjobs.enqueue import (
    RecipientSource,
    RequestRejected,
    check_template_storage,
    check_templates,
    enqueue,
    replay_or_conflict,
    request_hash,
    split_body,
    variants_json,
)
from mailjobs.records import (
    JOB_STATUSES,
    RECIPIENT_STATUSES,
    SUPPRESSION_REASONS,
    Job,
    StoredTemplate,
)
from mailjobs.settings import Settings, load_settings
from mailjobs.transports.test_keys import TestKeys
from mailjobs.web.openapi import openapi_document
from mailjobs.web.schemas import (
    EnqueueOut,
    RetryIn,
    RetryOut,
    SendTemplateEmailsIn,
    StoredTemplateIn,
    SuppressionIn,
    TemplateIn,
)
from mailjobs.web.views import (
    job_view,
    keyset_page,
    learned_caps_view,
    recipient_view,
    runner_view,
    sender_view,
    suppression_view,
    template_view,
    trace_view,
)

log = logging.getLogger("mailjobs.api")


def error_response(status: int, code: str, message: str,
                   errors: list[tuple[str | None, str]] | None = None,
                   extra: dict[str, Any] | None = None) -> Response:
    """The single shape of every error answer: error, message, field (and errors, and what
    one error adds, e.g. `allowed` of sender_not_verified)."""
    body: dict[str, Any] = {"error": code, "message": message,
                            "field": errors[0][0] if errors else None, **(extra or {})}
    if errors and len(errors) > 1:
        body["errors"] = [{"field": f, "message": m} for f, m in errors]
    response = jsonify(body)
    response.status_code = status
    return response


def _loc(loc: tuple) -> str | None:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after", "function-before") and not str(part).startswith(
                ("function-", "constrained-")):
            out += f".{part}" if out else str(part)
    return out or None


def _validation_errors(exc: ValidationError) -> list[tuple[str | None, str]]:
    out = []
    for err in exc.errors(include_url=False)[:20]:
        kind = err["type"]
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing":
            message = "this field is required"
        else:
            message = err["msg"].removeprefix("Value error, ")
        out.append((_loc(err["loc"]), message))
    return out


def parse_body(model: Any, raw: bytes, context: dict[str, Any] | None = None) -> Any:
    """Validate a JSON body with a pydantic model; every failure is a RequestRejected 400."""
    try:
        return model.model_validate_json(raw, context=context)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise RequestRejected(400, "invalid_json", f"body is not valid JSON: {first['msg']}",
                                  [(None, "not valid JSON")]) from None
        errors = _validation_errors(exc)
        raise RequestRejected(400, "validation_error", f"{errors[0][0]}: {errors[0][1]}"
                              if errors[0][0] else errors[0][1], errors) from None


def _read_body() -> bytes | bytearray:
    """The request body, read into one buffer of its Content-Length (get_data joins the pieces
    it reads: twice the body at once, 20 MB more for a 100,000-recipient job). A body that ends
    early is a ClientDisconnected (400): nothing is done with it."""
    size = request.content_length
    if size is None:
        return request.get_data(cache=False)
    stream = request.stream   # 413 here when Content-Length is over MAX_REQUEST_BYTES
    buf = bytearray(size)
    with memoryview(buf) as view:
        got = 0
        while got < size:
            n = stream.readinto(view[got:])
            if not n:
                raise ClientDisconnected()
            got += n
    return buf


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or nothing elsewhere."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: None if trim(0) else None


# After a large enqueue: give back to the system what its chunks left free in the malloc arenas
# of the threads that served it (each thread has its own; freed memory otherwise stays in the
# process, and the next large request's peak is added on top). ~1 ms.
release_free_memory = _malloc_trim()


def require_json() -> None:
    if request.mimetype != "application/json":
        raise RequestRejected(415, "unsupported_media_type",
                              "send the body as JSON with Content-Type: application/json",
                              [("Content-Type", "must be application/json")])


def _int_arg(name: str, default: int | None, low: int = 0, high: int = 2**63) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestRejected(400, "validation_error", f"{name} must be an integer",
                              [(name, "must be an integer")]) from None
    if not low <= value <= high:
        raise RequestRejected(400, "validation_error", f"{name} must be between {low} and {high}",
                              [(name, f"must be between {low} and {high}")])
    return value


def _status_arg(allowed: tuple[str, ...]) -> str | None:
    status = request.args.get("status") or None
    if status is not None and status not in allowed:
        raise RequestRejected(400, "validation_error", f"status must be one of {', '.join(allowed)}",
                              [("status", f"must be one of {', '.join(allowed)}")])
    return status


SCRAPER_GRACE = 600.0   # seconds an operator key that read /metrics still may while the DB is down


def create_app(settings: Settings | None = None, dao: Dao | None = None,
               runs_runner: bool = False, on_enqueue: Callable[[], None] | None = None) -> Flask:
    """The app. `runs_runner`: this process runs an embedded JobRunner, so /healthz
    requires a live one. `on_enqueue`: called after a job is committed, resumed or retried
    (the embedded runner's wake(), so it does not wait for its next poll)."""
    settings = settings or load_settings()
    dao = dao or Dao(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    app.extensions["mailjobs"] = {"dao": dao, "settings": settings}
    verifier = KeyVerifier(dao)
    test_keys = TestKeys(dao)
    metrics.configure(settings.metrics_sender_labels)
    large_slots = threading.BoundedSemaphore(max(1, settings.large_enqueue_concurrency))

    @app.errorhandler(RequestRejected)
    def _rejected(exc: RequestRejected) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.errors, exc.extra)

    # Every request's database work ends within DB_REQUEST_DEADLINE (registered first, so
    # the API key lookup is inside it too).
    @app.before_request
    def _start_deadline() -> None:
        db_guard.start_deadline(settings.db_request_deadline)

    @app.teardown_request
    def _end_deadline(exc: BaseException | None) -> None:
        db_guard.end_deadline()

    @app.errorhandler(DatabaseUnavailable)
    def _db_down(exc: DatabaseUnavailable) -> Response:
        # While the circuit is open every request fails this way: the breaker logged the
        # opening once, so these are not logged again one by one.
        (log.debug if exc.kind == "circuit" else log.error)(
            "database unavailable while serving %s %s: %s", request.method, request.path, exc)
        message = ("the database did not answer within the request's deadline"
                   if exc.kind in ("timeout", "deadline") else "the database is unavailable")
        response = error_response(503, "database_unavailable",
                                  f"{message}; nothing was stored, retry later")
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        if exc.code == 413:
            return error_response(413, "payload_too_large",
                                  f"request body is larger than {settings.max_request_bytes} bytes")
        response = error_response(exc.code or 500,
                                  (exc.name or "error").lower().replace(" ", "_"),
                                  exc.description or exc.name)
        if "Allow" in exc.get_response().headers:  # 405 must say what is allowed
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error serving %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected server error; see the server log")

    @app.before_request
    def _authenticate() -> Response | None:
        if not request.path.startswith("/api/"):
            return None
        presented = request.headers.get("X-API-Key")
        if not presented:
            return error_response(401, "unauthorized", "send your API key in the X-API-Key header",
                                  [("X-API-Key", "missing")])
        key = verifier.verify(presented)
        if key is None:
            return error_response(401, "unauthorized", "the API key is unknown or revoked",
                                  [("X-API-Key", "unknown or revoked")])
        g.api_key = key
        return None

    @app.post("/api/jobs/send_template_emails")
    def send_template_emails() -> Response:
        require_json()
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and not 1 <= len(idem) <= 255:
            raise RequestRejected(400, "validation_error", "Idempotency-Key must be 1-255 characters",
                                  [("Idempotency-Key", "must be 1-255 characters")])
        large = (request.content_length or 0) > settings.large_body_bytes
        if large and not large_slots.acquire(timeout=6 * settings.db_pool_timeout):
            response = error_response(503, "busy", "too many large jobs are being stored at "
                                      "once; nothing was stored, retry shortly")
            response.headers["Retry-After"] = "5"
            return response
        try:
            return _send_template_emails(idem)
        finally:
            if large:
                large_slots.release()
                release_free_memory()

    def _send_template_emails(idem: str | None) -> Response:
        body = _read_body()
        body_hash = request_hash(body)
        if idem:
            replay = replay_or_conflict(dao, g.api_key, idem, body_hash)
            if replay is not None:
                return _enqueued(replay.job, replayed=True)
        context = {"max_recipients": settings.max_recipients_per_job,
                   "metadata_max_bytes": settings.metadata_max_bytes}
        parts = split_body(body)
        if parts is None:   # not the usual shape (or not JSON): validated whole, as it says
            req = parse_body(SendTemplateEmailsIn, body, context)
            recipients = RecipientSource.parsed(req.recipients, _validation_errors)
        else:   # the job's fields now; its recipients a chunk at a time while they are stored
            head, raws = parts
            req = parse_body(SendTemplateEmailsIn, head,
                             {**context, "recipients_count": len(raws)})
            recipients = RecipientSource.raw(raws, _validation_errors, context)

        def check_total(total: int) -> None:
            if g.api_key.may_send_as(req.sender_email):   # else enqueue answers 403 first
                estimates.check_max_duration(dao, settings, req, unlimited=g.api_key.is_test,
                                             total=total)

        with metrics.ENQUEUE_SECONDS.time():
            result = enqueue(dao, g.api_key, req, body_hash, idem,
                             unsubscribe_base_url=settings.unsubscribe_base_url,
                             settings=settings, body_size=len(body), recipients=recipients,
                             check_total=check_total if req.max_duration is not None else None,
                             also=Also(plan=not g.api_key.is_test, live_runners_age=None
                                       if _runners_seen() else settings.runner_stale_after))
        if not result.replayed:
            metrics.ENQUEUED_RECIPIENTS.inc(result.job.total)
            _work_added()
        return _enqueued(result.job, replayed=result.replayed, suppressed=result.suppressed,
                         plan=result.plan, live=result.live_runners)

    def _work_added() -> None:
        if on_enqueue is not None:
            on_enqueue()

    live_seen = [float("-inf")]   # when live runners were last seen (monotonic)

    def _runners_seen() -> bool:
        return time.monotonic() - live_seen[0] < settings.heartbeat_interval

    def _live_runners(known: int | None = None) -> int:
        """Live runners, for the answer's warning: once some were seen, not read again for a
        HEARTBEAT_INTERVAL (a runner stays live for 3 of them; a round trip saved per POST).
        `known`: read already (in the transaction that stored the job)."""
        if _runners_seen():
            return 1
        n = len(dao.live_runners(settings.runner_stale_after)) if known is None else known
        if n:
            live_seen[0] = time.monotonic()
        return n

    def _enqueued(job: Job, replayed: bool, suppressed: int | None = None,
                  plan: tuple[int | None, int | None, int, int] | None = None,
                  live: int | None = None) -> Response:
        warnings = []
        if g.api_key.is_test:
            warnings.append("test key: this job runs without sender limits and sends no mail ("
                            + (f"messages are written to {settings.outbox_dir}"
                               if g.api_key.test_mode == "outbox" else "messages are discarded")
                            + ")")
        if runs_runner and settings.transport_name in ("outbox", "null"):
            warnings.append(f"MAIL_TRANSPORT is {settings.transport_name}: this server's runner "
                            "sends no mail" + (f" (messages are written to {settings.outbox_dir})"
                                               if settings.transport_name == "outbox" else ""))
        if _live_runners(live) == 0:
            warnings.append("no live runner: the job is stored and will wait until a runner "
                            "(embedded, or `mailjobs worker`) is running")
        if suppressed is None:   # a replay: read it
            suppressed = dao.suppressed_count(job.id)
        first_status = ("completed" if suppressed == job.total  # nothing to send (Dao.create_job)
                        else "scheduled" if job.send_at is not None else "queued")
        estimate = _stored_job_estimate(job, suppressed, replayed, warnings, plan)
        body = EnqueueOut(job_id=job.id, status=first_status, recipients=job.total,
                          duplicates_removed=job.duplicates_removed, suppressed=suppressed,
                          status_url=f"/api/jobs/{job.id}", warnings=warnings,
                          estimate=estimate, test=g.api_key.is_test)
        response = jsonify(body.model_dump(mode="json"))
        response.status_code = 202
        response.headers["Location"] = f"/api/jobs/{job.id}"
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response

    def _stored_job_estimate(job: Job, suppressed: int, replayed: bool, warnings: list[str],
                             plan: tuple[int | None, int | None, int, int] | None = None
                             ) -> dict[str, Any] | None:
        """The estimate of a job just stored (or replayed), under a deadline of its own: the
        job is committed, so a slow database costs the estimate (a warning says so), never
        the 202 (a client seeing 503 would post the job again)."""
        db_guard.start_deadline(settings.db_request_deadline)
        try:
            test = g.api_key.is_test
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

    def _visible_job(job_id: int, with_counts: bool = False) -> Job:
        job = dao.job(job_id, with_counts=with_counts)
        if job is None or (not g.api_key.is_operator and job.api_key_id != g.api_key.id):
            raise RequestRejected(404, "not_found", f"no job {job_id} for this API key",
                                  [("job_id", "not found")])
        return job

    def _is_test(job: Job) -> bool:
        """Whether a test key owns the job (its mode never changes: cached per process)."""
        if job.api_key_id == g.api_key.id:
            return g.api_key.is_test
        return test_keys.mode(job.api_key_id) is not None

    def _full_job(job_id: int) -> Response:
        job = _visible_job(job_id, with_counts=True)
        test = _is_test(job)
        return jsonify(job_view(job, dao.error_summary(job_id), test=test,
                                estimate=estimates.for_job(dao, settings, job, unlimited=test)))

    @app.get("/api/jobs/<int:job_id>")
    def get_job(job_id: int) -> Response:
        return _full_job(job_id)

    @app.errorhandler(job_control.Conflict)
    def _conflict(exc: job_control.Conflict) -> Response:
        return error_response(409, "conflict", str(exc))

    @app.post("/api/jobs/<int:job_id>/<any(cancel, pause, resume):action>")
    def control(job_id: int, action: str) -> Response:
        _visible_job(job_id)
        who = f"API key {g.api_key.id}"
        if action == "cancel":
            n = job_control.cancel(dao, job_id, who)
            log.info("job=%d cancelled by %s: %d unsent recipient(s) cancelled", job_id, who, n)
        elif action == "pause":
            job_control.pause(dao, job_id, "operator", f"paused by {who}")
            log.info("job=%d paused by %s", job_id, who)
        else:
            job_control.resume(dao, job_id)
            _work_added()
            log.info("job=%d resumed by %s", job_id, who)
        return _full_job(job_id)

    @app.post("/api/jobs/<int:job_id>/retry")
    def retry(job_id: int) -> Response:
        _visible_job(job_id)
        raw = request.get_data(cache=False)
        if raw.strip():
            require_json()
        spec = parse_body(RetryIn, raw) if raw.strip() else RetryIn()
        n = job_control.retry(dao, job_id, spec.status, spec.error_code)
        _work_added()
        log.info("job=%d: %d recipient(s) queued again by API key %d (status %s%s)", job_id, n,
                 g.api_key.id, spec.status,
                 f", error_code {spec.error_code}" if spec.error_code else "")
        found = _visible_job(job_id, with_counts=True)
        job = job_view(found, dao.error_summary(job_id), test=_is_test(found))
        return jsonify(RetryOut(**job, requeued=n).model_dump(mode="json"))

    @app.get("/api/jobs")
    def list_jobs() -> Response:
        limit = _int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
        before = _int_arg("before", None, 1)
        status = _status_arg(JOB_STATUSES)
        owner = None if g.api_key.is_operator else g.api_key.id
        jobs, next_before = keyset_page(dao.jobs_page(owner, before, limit + 1, status), limit)
        counts = dao.job_counts([j.id for j in jobs])
        return jsonify({"jobs": [job_view(j, counts=counts[j.id], test=_is_test(j)) for j in jobs],
                        "next_before": next_before})

    @app.get("/api/jobs/<int:job_id>/recipients")
    def list_recipients(job_id: int) -> Response:
        job = _visible_job(job_id)
        limit = _int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
        after = _int_arg("after", 0)
        status = _status_arg(RECIPIENT_STATUSES)
        rows, next_after = keyset_page(dao.recipients_page(job_id, status, after or 0, limit + 1),
                                       limit)
        return jsonify({"recipients": [recipient_view(r) for r in rows],
                        "next_after": next_after, "test": _is_test(job)})

    @app.get("/api/jobs/<int:job_id>/recipients.csv")
    def export_recipients(job_id: int) -> Response:
        """Every recipient of the job as CSV, streamed in keyset pages (export.py)."""
        _visible_job(job_id)
        return export.csv_response(dao, job_id, settings.db_request_deadline)

    @app.get("/api/recipients")
    def trace_address() -> Response:
        """Why did (or didn't) this address get our mail: its rows across jobs."""
        raw = (request.args.get("email") or "").strip()
        if not raw:
            raise RequestRejected(400, "validation_error", "email is required",
                                  [("email", "required")])
        try:
            email = normalize_address(raw)
        except InvalidAddress as exc:
            raise RequestRejected(400, "validation_error", f"email is not an address: {exc}",
                                  [("email", str(exc))]) from None
        limit = _int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
        before = _int_arg("before", None, 1)
        owner = None if g.api_key.is_operator else g.api_key.id
        return jsonify(trace_view(email, dao.recipients_by_email(email, owner, before, limit + 1),
                                  limit, dao.suppressions_of_email(email, owner)))

    def _operator() -> None:
        if not g.api_key.is_operator:
            raise RequestRejected(403, "operator_only", "this needs an operator API key",
                                  [("X-API-Key", "not an operator key")])

    def _body(model: Any) -> Any:
        require_json()
        return parse_body(model, request.get_data(cache=False))

    def _template_answer(t: StoredTemplate, status: int = 200) -> Response:
        response = jsonify(template_view(t))
        response.status_code = status
        response.headers["Location"] = f"/api/templates/{t.name}"
        return response

    @app.post("/api/templates")
    def create_template() -> Response:
        spec = _body(StoredTemplateIn)
        check_templates(spec, settings, prefix="")
        check_template_storage(dao, spec)
        stored = dao.add_template_version(g.api_key.id, spec.name, spec.subject, spec.html,
                                          spec.text, must_exist=False,
                                          variants=variants_json(spec))
        if stored is None:
            raise RequestRejected(409, "conflict", f"template {spec.name!r} exists; PUT "
                                  f"/api/templates/{spec.name} makes a new version",
                                  [("name", "exists already")])
        log.info("template %r version 1 created by API key %d", spec.name, g.api_key.id)
        return _template_answer(stored, 201)

    @app.put("/api/templates/<name>")
    def update_template(name: str) -> Response:
        spec = _body(TemplateIn)
        check_templates(spec, settings, prefix="")
        check_template_storage(dao, spec)
        stored = dao.add_template_version(g.api_key.id, name, spec.subject, spec.html,
                                          spec.text, must_exist=True,
                                          variants=variants_json(spec))
        if stored is None:
            raise RequestRejected(404, "not_found", f"no template {name!r} for this API key",
                                  [("name", "not found")])
        log.info("template %r version %d created by API key %d", name, stored.version,
                 g.api_key.id)
        return _template_answer(stored)

    @app.get("/api/templates")
    def list_templates() -> Response:
        return jsonify({"templates": [template_view(t) for t in dao.templates(g.api_key.id)]})

    @app.get("/api/templates/<name>")
    def template_versions(name: str) -> Response:
        versions = dao.template_versions(g.api_key.id, name)
        if not versions:
            raise RequestRejected(404, "not_found", f"no template {name!r} for this API key",
                                  [("name", "not found")])
        return jsonify({"name": name, "versions": [template_view(t) for t in versions]})

    # --- suppression list: addresses this key's jobs never send to ---------------------------
    @app.get("/api/suppressions")
    def list_suppressions() -> Response:
        limit = _int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
        after = _int_arg("after", 0)
        reason = request.args.get("reason") or None
        if reason is not None and reason not in SUPPRESSION_REASONS:
            allowed = ", ".join(SUPPRESSION_REASONS)
            raise RequestRejected(400, "validation_error", f"reason must be one of {allowed}",
                                  [("reason", f"must be one of {allowed}")])
        rows, next_after = keyset_page(
            dao.suppressions_page(g.api_key.id, after or 0, limit + 1, reason), limit)
        return jsonify({"suppressions": [suppression_view(x) for x in rows],
                        "next_after": next_after})

    @app.post("/api/suppressions")
    def add_suppression() -> Response:
        spec = _body(SuppressionIn)
        entry, added = dao.add_suppression(g.api_key.id, spec.email, spec.reason,
                                           detail=f"added through the API by key {g.api_key.id}")
        if added:
            log.info("%s suppressed (%s) by API key %d", entry.email, spec.reason, g.api_key.id)
        response = jsonify(suppression_view(entry))
        response.status_code = 201 if added else 200   # 200: listed already, entry unchanged
        return response

    @app.delete("/api/suppressions/<path:email>")   # path: a local part may hold "/"
    def remove_suppression(email: str) -> Response:
        if not dao.remove_suppression(g.api_key.id, email):
            raise RequestRejected(404, "not_found", f"{email} is not on this key's "
                                  "suppression list", [("email", "not found")])
        log.info("%s removed from the suppression list by API key %d", email, g.api_key.id)
        return Response(status=204)

    @app.get("/api/runners")
    def list_runners() -> Response:
        _operator()
        stale = settings.runner_stale_after
        return jsonify({"runners": [runner_view(r, stale) for r in dao.runners(100)]})

    @app.get("/api/senders")
    def list_senders() -> Response:
        _operator()
        limits = (settings.sender_rate_per_minute, settings.sender_daily_cap)
        return jsonify({"senders": [sender_view(r, dao.sender_sends_24h(r["email"]), limits)
                                    for r in dao.senders()],
                        "learned_caps": learned_caps_view(dao.learned_caps())})

    @app.get("/healthz")
    def healthz() -> Response:
        # Its own connection and timeout (HEALTHZ_DB_TIMEOUT): never behind the pool.
        database, live, detail = dao.health(settings.healthz_db_timeout,
                                            settings.runner_stale_after)
        body: dict[str, Any] = {"status": "ok", "database": database,
                                "transport": settings.transport_name}
        if database != "ok" or live is None:
            body.update(status="unavailable", reason=f"database {database}: {detail}")
            return _status(body, 503)
        body["runners"] = live
        needed = max(settings.expect_runners, 1 if runs_runner else 0)
        if live < needed:
            body.update(status="unavailable", reason=(
                f"{live} runner(s) with a heartbeat in the last "
                f"{settings.runner_stale_after:.0f} s, {needed} expected: jobs are not "
                "being sent"))
            return _status(body, 503)
        return jsonify(body)

    def _status(body: dict[str, Any], status: int) -> Response:
        response = jsonify(body)
        response.status_code = status
        return response

    recent_scrapers: dict[str, float] = {}     # SHA-256 of an operator key -> when verified

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        # Operators only: X-API-Key, or `Authorization: Bearer KEY` (Prometheus' own setting).
        bearer = request.headers.get("Authorization", "")
        presented = request.headers.get("X-API-Key") or (
            bearer[7:].strip() if bearer[:7].lower() == "bearer " else "")
        if not presented:
            return error_response(401, "unauthorized", "/metrics needs an operator API key in "
                                  "X-API-Key or Authorization: Bearer", [("X-API-Key", "missing")])
        digest = hashlib.sha256(presented.encode()).hexdigest()
        # the key check and the gauges together wait for the database HEALTHZ_DB_TIMEOUT at
        # most: a scrape says the database is down instead of timing out itself
        with db_guard.deadline(settings.healthz_db_timeout):
            try:
                scraper = verifier.verify(presented)
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

    def _refused_scraper(scraper: Any) -> Response:
        if scraper is None:
            return error_response(401, "unauthorized", "the API key is unknown or revoked",
                                  [("X-API-Key", "unknown or revoked")])
        return error_response(403, "operator_only", "this needs an operator API key",
                              [("X-API-Key", "not an operator key")])

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document())

    from mailjobs.dashboard.pages import (
        register_dashboard,  # operators' HTML pages, not in /openapi.json
    )
    register_dashboard(app, dao, settings)
    from mailjobs.deliverability.unsubscribe import (
        register_unsubscribe,  # recipients' /u/ pages, not in /openapi.json
    )
    register_unsubscribe(app, dao, settings)
    from mailjobs.webhooks.routes import register_webhooks  # /api/webhooks and its deliveries
    register_webhooks(app, dao, settings, _body, _int_arg)
    from mailjobs.attachments.routes import register_attachments  # /api/attachments
    register_attachments(app, dao, settings)
    return app


if __name__ == "__main__":
    from mailjobs.entry import main

    main(["serve"])
