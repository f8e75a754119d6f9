"""The operators' dashboard: read-only HTML pages over the same data as the API and the CLI.

- Behind an OPERATOR API key: `/dashboard/login` takes the key once, checks it with KeyVerifier
  and accepts operator keys only; a random session token then lives in Flask's signed session
  cookie (HttpOnly, SameSite=Lax, path /dashboard, 12 hours, Secure when the request came over
  HTTPS), and its SHA-256 in `dashboard_sessions`. Every request reads the session row and the
  key row again, so logging out ends that session (an old copy of the cookie no longer works)
  and revoking the key (`mailjobs api-key revoke`) ends all its sessions at once.
- Server-rendered Jinja templates (`templates/dashboard/`, autoescaped), plain CSS, no
  JavaScript: the send-rate chart is inline SVG computed here. A strict Content-Security-Policy
  forbids scripts altogether, as a second line behind the escaping.
- Not part of /openapi.json: it is for people, not clients.

The cookie is signed with SECRET_KEY; when unset (development), a key is generated into
var/secret_key (0600) and reused, as sender_credentials does for its token key.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from mailjobs import export
from mailjobs.dao_mysql import DatabaseUnavailable
from mailjobs.deliverability.addresses import InvalidAddress, normalize_address
from mailjobs.records import JOB_STATUSES, RECIPIENT_STATUSES, ApiKey
from mailjobs.settings import PROJECT_ROOT, Settings
from mailjobs.states import ACTIVE_JOB_STATUSES
from mailjobs.web.state import app_state, get_settings, get_store
from mailjobs.web.views import keyset_page, learned_caps_view, runner_view, sender_view

log = logging.getLogger("mailjobs.dashboard")

DEV_SECRET_FILE = PROJECT_ROOT / "var" / "secret_key"
JOBS_PER_PAGE = 25
FAILED_PER_PAGE = 100
TRACE_PER_PAGE = 50
SESSION_LIFETIME = timedelta(hours=12)
# Minutes per bar of the send-rate chart: the smallest that keeps it at most CHART_MAX_BARS bars.
CHART_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 240, 360, 720, 1440)
CHART_MAX_BARS = 180
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' "
                               "data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def secret_key(settings: Settings) -> str:
    """SECRET_KEY, or the development key in var/secret_key (made on first use, 0600)."""
    if settings.secret_key:
        return settings.secret_key
    path = DEV_SECRET_FILE
    try:
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)  # atomic; another process that got there first wins
            log.warning("SECRET_KEY is not set: generated a development key in %s; set "
                        "SECRET_KEY in production (the same on every API process)", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_text().strip()
    except OSError as exc:  # a read-only install must still serve the API
        log.warning("SECRET_KEY is not set and %s cannot be written (%s): dashboard sessions "
                    "last until this process stops; set SECRET_KEY", path, exc)
        return secrets.token_urlsafe(48)


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, marked Secure whenever the request itself came over HTTPS
    (wsgi.url_scheme; behind a proxy, gunicorn sets it from a trusted X-Forwarded-Proto)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or super().get_cookie_secure(app)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- formatting helpers (Jinja filters) -----------------------------------------------------
def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value if isinstance(value, datetime) else None


def fmt_utc(value: Any) -> str:
    when = _as_datetime(value)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if when else "—"


def fmt_age(seconds: float | None) -> str:
    """3 s, 4 min 10 s, 2 h 5 min, 3 d 4 h."""
    if seconds is None:
        return "—"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s < 600 else f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def fmt_since(value: Any) -> str:
    when = _as_datetime(value)
    if when is None:
        return "—"
    return fmt_age((datetime.now(UTC) - when).total_seconds()) + " ago"


def fmt_size(value: Any) -> str:
    """Bytes as people read them: 812 B, 4.2 kB, 2.0 MB."""
    n = float(value or 0)
    for unit in ("B", "kB", "MB"):
        if n < 1000 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} MB"   # pragma: no cover


def fmt_num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


# --- what the pages compute ----------------------------------------------------------------
def progress(counts: dict[str, int], total: int) -> dict[str, Any]:
    """Segments of a progress bar: sent, failed, in doubt, expired, cancelled, bounced,
    suppressed, and the rest pending."""
    total = max(total, sum(counts.values()), 1)
    parts = {"sent": counts.get("sent", 0), "failed": counts.get("failed", 0),
             "in_doubt": counts.get("in_doubt", 0), "expired": counts.get("expired", 0),
             "cancelled": counts.get("cancelled", 0),
             "bounced": counts.get("bounced", 0), "suppressed": counts.get("suppressed", 0)}
    done = sum(parts.values())
    return {**parts, "total": total, "pending": total - done,
            "done_pct": round(100 * done / total, 1),
            "segments": [(name, round(100 * n / total, 3), n) for name, n in parts.items() if n]}


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 × 10^k that is >= value."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * power >= value - 1e-9:
            return float(step * power)
    return float(10 * power)


def _fmt_rate(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def send_rate_chart(points: list[tuple[datetime, int]], width: int = 860,
                    height: int = 240) -> dict[str, Any] | None:
    """Geometry of the send-rate bar chart: one bar per minute that had sends (per bucket of
    several minutes when the job ran for longer than CHART_MAX_BARS minutes); the height is
    sends per minute. Rendered as SVG by the template (autoescaped)."""
    if not points:
        return None
    first, last = points[0][0], points[-1][0]
    span = int((last - first).total_seconds() // 60) + 1
    bucket = next((b for b in CHART_BUCKETS if span / b <= CHART_MAX_BARS), CHART_BUCKETS[-1])
    slots = math.ceil(span / bucket)
    sums: dict[int, int] = {}
    for minute, n in points:
        index = int((minute - first).total_seconds() // 60) // bucket
        sums[index] = sums.get(index, 0) + n
    rates = {i: n / bucket for i, n in sums.items()}
    peak = max(rates.values())
    top_value = _nice_ceiling(peak)
    left, right, top, bottom = 52, 16, 14, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    slot_w = plot_w / slots
    bar_w = min(48.0, max(1.0, slot_w * 0.8 if slot_w >= 3 else slot_w))
    long_span = span > 1440
    label_fmt = "%m-%d %H:%M" if long_span else "%H:%M"
    bars = []
    for i in sorted(rates):
        h = plot_h * rates[i] / top_value
        start = first + timedelta(minutes=i * bucket)
        period = f"{start:%Y-%m-%d %H:%M}" + (f"+{bucket} min" if bucket > 1 else "")
        bars.append({"x": round(left + i * slot_w + (slot_w - bar_w) / 2, 2),
                     "y": round(top + plot_h - h, 2), "w": round(bar_w, 2),
                     "h": round(max(h, 0.5), 2), "minute": start.isoformat(),
                     "title": f"{period} UTC: {sums[i]} sent ({_fmt_rate(rates[i])}/min)"})
    y_ticks = [{"y": round(top + plot_h - plot_h * f, 2), "label": _fmt_rate(top_value * f)}
               for f in (0, 0.25, 0.5, 0.75, 1)]
    step = math.ceil(slots / 7)  # at most 7 time labels, evenly spaced
    x_ticks = [{"x": round(left + (i + 0.5) * slot_w, 2),
                "label": (first + timedelta(minutes=i * bucket)).strftime(label_fmt)}
               for i in range(0, slots, step)]
    total = sum(n for _, n in points)
    return {"width": width, "height": height, "left": left, "right": width - right,
            "top": top, "bottom": top + plot_h, "bars": bars, "y_ticks": y_ticks,
            "x_ticks": x_ticks, "bucket": bucket, "total": total,
            "peak": _fmt_rate(peak), "average": _fmt_rate(total / span), "minutes": span,
            "first": first, "last": last + timedelta(minutes=1)}


def _safe_next(target: str | None) -> str:
    """Only a path inside the dashboard: no open redirect."""
    default = url_for("dashboard.jobs")
    if not target or not target.startswith("/dashboard") or "\\" in target:
        return default
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else default


def _int_arg(name: str, default: int) -> int:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit() or len(raw) > 19:
        abort(400, f"{name} must be a non-negative integer")
    return int(raw)


# --- the blueprint ---------------------------------------------------------------------------
bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates")


@bp.record_once
def _per_app(setup: BlueprintSetupState) -> None:
    """The signed session cookie of the app the dashboard is mounted on."""
    app = cast(Flask, setup.app)   # a sans-IO App in Flask's annotation; a Flask here
    app.secret_key = secret_key(app_state(app)["settings"])
    app.session_interface = _SessionInterface()
    app.config.update(SESSION_COOKIE_NAME="mailjobs_dashboard", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_PATH="/dashboard",
                      PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME)


for name, func in (("utc", fmt_utc), ("age", fmt_age), ("since", fmt_since),
                   ("num", fmt_num), ("filesize", fmt_size)):
    bp.add_app_template_filter(func, name)


def _session_key() -> ApiKey | None:
    token = session.get("sid")
    if not isinstance(token, str):
        return None
    dao = get_store()
    key_id = dao.dashboard_session_key(_token_hash(token))
    if key_id is None:                 # logged out or expired: the cookie is worth nothing
        session.clear()
        return None
    key = dao.api_key_by_id(key_id)
    if key is None or key.revoked_at is not None or not key.is_operator:
        session.clear()
        return None
    return key


@bp.before_request
def _require_operator() -> ResponseReturnValue | None:
    if request.endpoint == "dashboard.login":
        return None
    key = _session_key()
    if key is None:
        here = request.path + (f"?{request.query_string.decode('latin-1')}"
                               if request.query_string else "")
        return redirect(url_for("dashboard.login", next=here))
    g.operator = key
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@bp.context_processor
def _context() -> dict[str, Any]:
    return {"operator": g.get("operator"), "now": datetime.now(UTC)}


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    return render_template("dashboard/error.html", code=exc.code, title=exc.name,
                           message=exc.description), exc.code or 500


@bp.errorhandler(DatabaseUnavailable)
def _db_down(exc: DatabaseUnavailable) -> tuple[str, int, dict[str, str]]:
    log.error("database unavailable while serving %s: %s", request.path, exc)
    return (render_template("dashboard/error.html", code=503, title="Database unavailable",
                            message="The database did not answer; this page refreshes "
                                    "in a few seconds.", refresh=5),
            503, {"Retry-After": "5"})


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    next_url = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("dashboard/login.html", next_url=next_url,
                               logged_out="logged_out" in request.args)
    key = app_state()["verifier"].verify(request.form.get("api_key", ""))
    if key is None or not key.is_operator:
        error, status = (("That key is unknown or revoked.", 401) if key is None else
                         ("That key is not an operator key; the dashboard needs one.", 403))
        log.warning("dashboard login refused from %s: %s", request.remote_addr, error)
        return render_template("dashboard/login.html", next_url=next_url,
                               error=error), status
    session.clear()
    token = secrets.token_urlsafe(32)
    get_store().create_dashboard_session(_token_hash(token), key.id,
                                         int(SESSION_LIFETIME.total_seconds()))
    session["sid"] = token
    log.info("dashboard login with operator key %d (%s)", key.id, key.name)
    return redirect(next_url)


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    token = session.get("sid")
    if isinstance(token, str):
        get_store().end_dashboard_session(_token_hash(token))
    session.clear()
    return redirect(url_for("dashboard.login", logged_out=1))


@bp.get("/")
def jobs() -> str:
    status = request.args.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        abort(400, f"status must be one of {', '.join(JOB_STATUSES)}")
    dao, test_keys = get_store(), app_state()["test_keys"]
    before = _int_arg("before", 0) or None
    page, next_before = keyset_page(dao.jobs_page(None, before, JOBS_PER_PAGE + 1, status),
                                    JOBS_PER_PAGE)
    counts = dao.job_counts([j.id for j in page])
    rows = [{"job": j, "progress": progress(counts.get(j.id, {}), j.total),
             "test": test_keys.mode(j.api_key_id)} for j in page]
    return render_template("dashboard/jobs.html", rows=rows, status=status,
                           statuses=JOB_STATUSES, first_page=before is None,
                           next_before=next_before)


@bp.get("/jobs/<int:job_id>")
def job(job_id: int) -> str:
    dao = get_store()
    found = dao.job(job_id, with_counts=True)
    if found is None:
        abort(404, f"There is no job {job_id}.")
    after = _int_arg("failed_after", 0)
    failed, next_failed = keyset_page(
        dao.recipients_page(job_id, "failed", after, FAILED_PER_PAGE + 1), FAILED_PER_PAGE)
    return render_template(
        "dashboard/job.html", job=found, progress=progress(found.counts, found.total),
        statuses=RECIPIENT_STATUSES, errors=dao.error_summary(job_id),
        chart=send_rate_chart(dao.send_rate(job_id)), failed=failed, failed_after=after,
        next_failed=next_failed, test=app_state()["test_keys"].mode(found.api_key_id),
        active=found.status in ACTIVE_JOB_STATUSES)


@bp.get("/jobs/<int:job_id>/recipients.csv")
def job_csv(job_id: int) -> Response:
    """The job's recipients as CSV: the same export as the API's recipients.csv."""
    dao = get_store()
    if dao.job(job_id) is None:
        abort(404, f"There is no job {job_id}.")
    response: Response = export.csv_response(dao, job_id, get_settings().db_request_deadline)
    return response


@bp.get("/recipients")
def trace() -> ResponseReturnValue:
    """One address across every key's jobs: the operators' "did ann@ get it?" page."""
    raw = (request.args.get("email") or "").strip()
    if not raw:
        return render_template("dashboard/trace.html", email="", rows=None, error=None)
    try:
        email = normalize_address(raw)
    except InvalidAddress as exc:
        return render_template("dashboard/trace.html", email=raw, rows=None,
                               error=f"That is not an email address: {exc}"), 400
    dao = get_store()
    before = _int_arg("before", 0) or None
    rows, next_before = keyset_page(
        dao.recipients_by_email(email, None, before, TRACE_PER_PAGE + 1), TRACE_PER_PAGE,
        lambda row: row[0].id)
    return render_template("dashboard/trace.html", email=email, rows=rows, error=None,
                           suppressions=dao.suppressions_of_email(email, None),
                           next_before=next_before)


@bp.get("/runners")
def runners() -> str:
    stale_after = get_settings().runner_stale_after
    rows = []
    for row in get_store().runners(100):
        view = runner_view(row, stale_after)
        view["stale"] = not view["alive"] and row["state"] != "stopped"
        rows.append(view)
    return render_template("dashboard/runners.html", rows=rows, stale_after=stale_after,
                           alive=sum(r["alive"] for r in rows),
                           stale=sum(r["stale"] for r in rows))


@bp.get("/senders")
def senders() -> str:
    dao, settings = get_store(), get_settings()
    limits = (settings.sender_rate_per_minute, settings.sender_daily_cap)
    now = datetime.now(UTC)
    rows = []
    for row in dao.senders():
        view = sender_view(row, dao.sender_sends_24h(row["email"]), limits)
        cap = view["daily_cap"]
        view["quota_pct"] = min(100.0, round(100 * view["sent_24h"] / cap, 1)) if cap else None
        view["deferred"] = row["paused_until"] is not None and row["paused_until"] > now
        view["blocked"] = view["auth_state"] in ("auth_revoked", "config_error")
        rows.append(view)
    local = settings.transport_name if settings.transport_name in ("outbox", "null") else None
    caps = learned_caps_view(dao.learned_caps())
    return render_template("dashboard/senders.html", rows=rows, local_transport=local,
                           caps=caps)


@bp.get("/webhooks")
def webhooks() -> str:
    from mailjobs.webhooks.routes import webhook_view  # the API's shape of an endpoint

    dao = get_store()
    after = _int_arg("after", 0)
    rows, next_after = keyset_page(dao.webhooks_page(None, after, 101), 100,
                                   cursor=lambda w: w["id"])
    return render_template("dashboard/webhooks.html", rows=[webhook_view(w) for w in rows],
                           next_after=next_after, oldest=dao.oldest_undelivered_event_age())


@bp.get("/webhooks/<int:webhook_id>")
def webhook(webhook_id: int) -> str:
    from mailjobs.webhooks.routes import delivery_view, webhook_view

    dao = get_store()
    w = dao.webhook(webhook_id)
    if w is None:
        abort(404)
    before = _int_arg("before", 0) or None
    rows, next_before = keyset_page(dao.webhook_deliveries(webhook_id, before, 101), 100,
                                    cursor=lambda d: d["id"])
    return render_template("dashboard/webhook.html", w=webhook_view(w),
                           rows=[delivery_view(d) for d in rows], next_before=next_before)


@bp.post("/webhooks/<int:webhook_id>/deliveries/<int:delivery_id>/retry")
def retry_delivery(webhook_id: int, delivery_id: int) -> Response:
    if not get_store().retry_webhook_delivery(webhook_id, delivery_id):
        abort(404)
    log.info("webhook endpoint=%d delivery=%d retried from the dashboard by API key %d",
             webhook_id, delivery_id, g.operator.id)
    return redirect(url_for("dashboard.webhook", webhook_id=webhook_id))  # type: ignore[return-value]

