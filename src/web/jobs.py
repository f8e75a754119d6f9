"""A key's jobs: read one or a page of them, their recipients (JSON pages or the CSV export),
pause, resume, cancel, retry; and one address traced across the jobs (/api/recipients).

A key sees its own jobs (another key's job is 404); an operator key sees every key's.
"""
from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from mailjobs import defaults, estimates, export, job_control
from mailjobs.deliverability.addresses import InvalidAddress, normalize_address
from mailjobs.enqueue import RequestRejected
from mailjobs.records import JOB_STATUSES, RECIPIENT_STATUSES, Job
from mailjobs.web.inputs import choice_arg, int_arg, parse_body, require_json
from mailjobs.web.schemas import RetryIn, RetryOut
from mailjobs.web.state import api_key, app_state, get_settings, get_store, work_added
from mailjobs.web.views import job_view, keyset_page, recipient_view, trace_view

log = logging.getLogger("mailjobs.api")
bp = Blueprint("jobs", __name__)


def visible_job(job_id: int, with_counts: bool = False) -> Job:
    """The job, if this request's key may see it; else 404."""
    job = get_store().job(job_id, with_counts=with_counts)
    key = api_key()
    if job is None or (not key.is_operator and job.api_key_id != key.id):
        raise RequestRejected(404, "not_found", f"no job {job_id} for this API key",
                              [("job_id", "not found")])
    return job


def _is_test(job: Job) -> bool:
    """Whether a test key owns the job (its mode never changes: cached per process)."""
    key = api_key()
    if job.api_key_id == key.id:
        return key.is_test
    return app_state()["test_keys"].mode(job.api_key_id) is not None


def _full_job(job_id: int) -> Response:
    dao = get_store()
    job = visible_job(job_id, with_counts=True)
    test = _is_test(job)
    return jsonify(job_view(job, dao.error_summary(job_id), test=test,
                            estimate=estimates.for_job(dao, get_settings(), job, unlimited=test)))


@bp.get("/api/jobs/<int:job_id>")
def get_job(job_id: int) -> Response:
    return _full_job(job_id)


@bp.post("/api/jobs/<int:job_id>/<any(cancel, pause, resume):action>")
def control(job_id: int, action: str) -> Response:
    dao = get_store()
    visible_job(job_id)
    who = f"API key {api_key().id}"
    if action == "cancel":
        n = job_control.cancel(dao, job_id, who)
        log.info("job=%d cancelled by %s: %d unsent recipient(s) cancelled", job_id, who, n)
    elif action == "pause":
        job_control.pause(dao, job_id, "operator", f"paused by {who}")
        log.info("job=%d paused by %s", job_id, who)
    else:
        job_control.resume(dao, job_id)
        work_added()
        log.info("job=%d resumed by %s", job_id, who)
    return _full_job(job_id)


@bp.post("/api/jobs/<int:job_id>/retry")
def retry(job_id: int) -> Response:
    dao = get_store()
    visible_job(job_id)
    raw = request.get_data(cache=False)
    if raw.strip():
        require_json()
    spec = parse_body(RetryIn, raw) if raw.strip() else RetryIn()
    n = job_control.retry(dao, job_id, spec.status, spec.error_code)
    work_added()
    log.info("job=%d: %d recipient(s) queued again by API key %d (status %s%s)", job_id, n,
             api_key().id, spec.status,
             f", error_code {spec.error_code}" if spec.error_code else "")
    found = visible_job(job_id, with_counts=True)
    job = job_view(found, dao.error_summary(job_id), test=_is_test(found))
    return jsonify(RetryOut(**job, requeued=n).model_dump(mode="json"))


@bp.get("/api/jobs")
def list_jobs() -> Response:
    dao, key = get_store(), api_key()
    limit = int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
    before = int_arg("before", None, 1)
    status = choice_arg("status", JOB_STATUSES)
    owner = None if key.is_operator else key.id
    jobs, next_before = keyset_page(dao.jobs_page(owner, before, limit + 1, status), limit)
    counts = dao.job_counts([j.id for j in jobs])
    return jsonify({"jobs": [job_view(j, counts=counts[j.id], test=_is_test(j)) for j in jobs],
                    "next_before": next_before})


@bp.get("/api/jobs/<int:job_id>/recipients")
def list_recipients(job_id: int) -> Response:
    job = visible_job(job_id)
    limit = int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
    after = int_arg("after", 0)
    status = choice_arg("status", RECIPIENT_STATUSES)
    rows, next_after = keyset_page(
        get_store().recipients_page(job_id, status, after, limit + 1), limit)
    return jsonify({"recipients": [recipient_view(r) for r in rows],
                    "next_after": next_after, "test": _is_test(job)})


@bp.get("/api/jobs/<int:job_id>/recipients.csv")
def export_recipients(job_id: int) -> Response:
    """Every recipient of the job as CSV, streamed in keyset pages (export.py)."""
    visible_job(job_id)
    response: Response = export.csv_response(get_store(), job_id,
                                             get_settings().db_request_deadline)
    return response


@bp.get("/api/recipients")
def trace_address() -> Response:
    """Why did (or didn't) this address get our mail: its rows across jobs."""
    dao, key = get_store(), api_key()
    raw = (request.args.get("email") or "").strip()
    if not raw:
        raise RequestRejected(400, "validation_error", "email is required",
                              [("email", "required")])
    try:
        email = normalize_address(raw)
    except InvalidAddress as exc:
        raise RequestRejected(400, "validation_error", f"email is not an address: {exc}",
                              [("email", str(exc))]) from None
    limit = int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
    before = int_arg("before", None, 1)
    owner = None if key.is_operator else key.id
    return jsonify(trace_view(email, dao.recipients_by_email(email, owner, before, limit + 1),
                              limit, dao.suppressions_of_email(email, owner)))
