"""The `mailjobs` commands that read and control jobs, runners and senders.

Each talks to the database directly, or to a remote API when --url (MAILJOBS_URL) is given with
--key (MAILJOBS_API_KEY). Human output is tables; --json prints the API's JSON for scripts.
"""
from __future__ import annotations

import functools
import json
import time
from typing import Any

import click

from mailjobs.cli.backend import Backend, BackendError
from mailjobs.cli.common import emit, json_option, run, table
from mailjobs.records import JOB_STATUSES, RECIPIENT_STATUSES
from mailjobs.states import (
    DEFAULT_RETRY_STATUSES,
    FINAL_JOB_STATUSES,
    FINAL_RECIPIENT_STATUSES,
    RETRYABLE_RECIPIENT_STATUSES,
    JobAction,
)

commands = click.Group("jobs")   # registered on the `mailjobs` group by cli.main


def _job_of(backend: Backend, job_id: int) -> dict[str, Any]:
    return backend.job(job_id)


def _done(job: dict[str, Any]) -> int:
    counts: dict[str, int] = job["counts"]
    return sum(n for status, n in counts.items() if status in FINAL_RECIPIENT_STATUSES)


@commands.command("jobs")
@click.option("--status", type=click.Choice(JOB_STATUSES))
@click.option("--limit", default=20, show_default=True)
@json_option
@click.pass_context
def jobs_cmd(ctx: click.Context, status: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    jobs = run(ctx, lambda b: b.jobs(status, limit))
    if not as_json:
        for j in jobs:  # the list view has no counts: fetch them for the table
            j["counts"] = run(ctx, functools.partial(_job_of, job_id=j["id"]))["counts"]
    emit(jobs, as_json, lambda js: table(
        ["ID", "STATUS", "SENT", "FAILED", "TOTAL", "SENDER", "CREATED"],
        [[j["id"], j["status"], j["counts"].get("sent", 0), j["counts"].get("failed", 0),
          j["total"], j["sender_email"], j["created_at"][:19]] for j in js]))


def _show(job: dict[str, Any]) -> None:
    if job.get("test"):
        click.echo("test           yes: a test key's job, nothing reaches a real transport")
    for key in ("id", "status", "status_reason", "sender_email", "total", "created_at",
                "send_at", "started_at", "finished_at"):
        if job.get(key) is not None:
            click.echo(f"{key:<14} {job[key]}")
    click.echo("counts         " + (", ".join(f"{k}={v}" for k, v in sorted(job["counts"].items()))
                                    or "-"))
    c = job["counts"]   # deliverability: bounces read back from Gmail, suppressed addresses
    click.echo(f"{'bounced':<14} {c.get('bounced', 0)}   suppressed {c.get('suppressed', 0)}")
    if job.get("errors"):
        click.echo("errors:")
        for e in job["errors"]:
            click.echo(f"  {e['error_code']:<18} {e['count']:>6}  {e['example']}")


@commands.command("show")
@click.argument("job_id", type=int)
@json_option
@click.pass_context
def show_cmd(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """A job's status, counts and errors."""
    emit(run(ctx, lambda b: b.job(job_id)), as_json, _show)


@commands.command("errors")
@click.argument("job_id", type=int)
@json_option
@click.pass_context
def errors_cmd(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """A job's unsent recipients grouped by error_code, with an example each."""
    errors = run(ctx, lambda b: b.job(job_id))["errors"] or []
    emit(errors, as_json, lambda es: table(
        ["ERROR_CODE", "COUNT", "EXAMPLE"],
        [[e["error_code"], e["count"], (e["example"] or "")[:100]] for e in es])
        if es else click.echo(f"job {job_id} has no errors"))


def _language(r: dict[str, Any]) -> str:
    """The locale asked for and the template variant given: "zh-TW>zh-Hant", "de>default"."""
    if not r.get("locale") and not r.get("locale_used"):
        return ""
    return f"{r.get('locale') or '-'}>{r.get('locale_used') or 'default'}"


@commands.command("recipients")
@click.argument("job_id", type=int)
@click.option("--status", type=click.Choice(RECIPIENT_STATUSES))
@click.option("--limit", default=50, show_default=True)
@click.option("--after", default=0, help="next_after of the previous page")
@json_option
@click.pass_context
def recipients_cmd(ctx: click.Context, job_id: int, status: str | None, limit: int, after: int,
                   as_json: bool) -> None:
    """One page of a job's recipients."""
    page = run(ctx, lambda b: b.recipients(job_id, status, limit, after))

    def human(p: dict[str, Any]) -> None:
        table(["ID", "EMAIL", "STATUS", "LANGUAGE", "ATTEMPTS", "ERROR_CODE", "ERROR"],
               [[r["id"], r["to_email"], r["status"], _language(r), r["attempts"],
                 r["error_code"], (r["error"] or "")[:80]] for r in p["recipients"]])
        if p["next_after"]:
            click.echo(f"more: --after {p['next_after']}")
    emit(page, as_json, human)


@commands.command("trace")
@click.argument("email")
@click.option("--limit", default=50, show_default=True)
@click.option("--before", type=int, help="next_before of the previous page")
@json_option
@click.pass_context
def trace_cmd(ctx: click.Context, email: str, limit: int, before: int | None,
              as_json: bool) -> None:
    """Did EMAIL get our mail? Its rows in every job, newest first, and its suppressions."""
    found = run(ctx, lambda b: b.trace(email, limit, before))

    def human(t: dict[str, Any]) -> None:
        if not t["recipients"]:
            click.echo(f"{t['email']}: in no job")
        else:
            table(["JOB", "JOB_STATUS", "RECIPIENT", "STATUS", "ATTEMPTS", "SENT_AT",
                    "ERROR_CODE", "ERROR"],
                   [[r["job_id"], r["job_status"], r["id"], r["status"], r["attempts"],
                     r["sent_at"], r["error_code"], (r["error"] or "")[:70]]
                    for r in t["recipients"]])
        if t["next_before"]:
            click.echo(f"more: --before {t['next_before']}")
        for x in t["suppressions"]:
            click.echo(f"suppressed for API key {x['api_key_id']} since {x['created_at']}: "
                       f"{x['reason']}" + (f" (job {x['job_id']})" if x["job_id"] else "")
                       + (f": {x['detail']}" if x["detail"] else ""))
    emit(found, as_json, human)


@commands.command("export")
@click.argument("job_id", type=int)
@click.option("--csv", "as_csv", is_flag=True, required=True,
              help="CSV, one row per recipient with a header row (the only format so far)")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True),
              help="write to this file (default: standard output)")
@click.pass_context
def export_cmd(ctx: click.Context, job_id: int, as_csv: bool, output: str | None) -> None:
    """Every recipient of a job as CSV: status, error_code, error, attempts, sent_at,
    gmail_message_id. Streamed page by page, in constant memory."""
    chunks = run(ctx, lambda b: b.export_csv(job_id))
    try:
        with click.open_file(output or "-", "wb") as handle:   # "-": stdout, left open
            for chunk in chunks:
                handle.write(chunk)
    except BackendError as exc:
        raise click.ClickException(str(exc)) from None


def _control(action: JobAction, help_text: str) -> None:
    @commands.command(action, help=help_text)
    @click.argument("job_id", type=int)
    @json_option
    @click.pass_context
    def command(ctx: click.Context, job_id: int, as_json: bool) -> None:
        job = run(ctx, lambda b: b.control(job_id, action))
        emit(job, as_json, lambda j: click.echo(f"job {job_id} is {j['status']}"))


_control(JobAction.CANCEL, "No further sends; unsent recipients become cancelled.")
_control(JobAction.PAUSE, "Runners stop claiming the job within a poll interval.")
_control(JobAction.RESUME, "A paused job goes back to work.")


@commands.command("retry")
@click.argument("job_id", type=int)
@click.option("--status", "statuses", multiple=True,
              type=click.Choice([s.value for s in RETRYABLE_RECIPIENT_STATUSES]),
              help="recipient status to retry (repeatable; default failed and in_doubt)")
@click.option("--error-code", "codes", multiple=True, help="only these error codes (repeatable)")
@json_option
@click.pass_context
def retry_cmd(ctx: click.Context, job_id: int, statuses: tuple[str, ...], codes: tuple[str, ...],
              as_json: bool) -> None:
    """Send again to the recipients that failed (optionally by error code)."""
    job = run(ctx, lambda b: b.retry(job_id, list(statuses) or [s.value for s in DEFAULT_RETRY_STATUSES],
                                      list(codes)))
    emit(job, as_json, lambda j: click.echo(
        f"job {job_id} is {j['status']}: {j['counts'].get('queued', 0)} recipient(s) queued"))


def progress_line(job: dict[str, Any], rate: float, width: int = 30) -> str:
    total = max(1, job["total"])
    done = _done(job)
    filled = int(width * done / total)
    c = job["counts"]
    left = job["total"] - done
    eta = f"{left / rate / 60:.1f} min" if rate > 0 and left else "-"
    return (f"[{'#' * filled}{'.' * (width - filled)}] {done}/{job['total']} "
            f"sent={c.get('sent', 0)} failed={c.get('failed', 0)} {job['status']} "
            f"rate={rate:.1f}/s eta={eta}")


@commands.command("watch")
@click.argument("job_id", type=int)
@click.option("--interval", default=1.0, show_default=True, help="seconds between updates")
@json_option
@click.pass_context
def watch_cmd(ctx: click.Context, job_id: int, interval: float, as_json: bool) -> None:
    """Live progress of a job until it ends: sent/failed/total, rate, ETA."""
    first = run(ctx, lambda b: b.job(job_id))
    start, start_done = time.monotonic(), _done(first)
    job = first
    while True:
        rate = (_done(job) - start_done) / max(1e-6, time.monotonic() - start)
        if as_json:
            click.echo(json.dumps({"job": job, "rate": round(rate, 2)}))
        else:
            click.echo("\r" + progress_line(job, rate), nl=False)
        if job["status"] in FINAL_JOB_STATUSES:
            break
        time.sleep(interval)
        job = run(ctx, lambda b: b.job(job_id))
    if not as_json:
        click.echo()
        _show(job)


@commands.command("runners")
@json_option
@click.pass_context
def runners_cmd(ctx: click.Context, as_json: bool) -> None:
    """Runners with their heartbeat age and state."""
    emit(run(ctx, lambda b: b.runners()), as_json, lambda rs: table(
        ["ID", "KIND", "STATE", "ALIVE", "HEARTBEAT_AGE_S", "JOB", "SENT", "FAILED", "HOST"],
        [[r["id"], r["kind"], r["state"], "yes" if r["alive"] else "NO", r["heartbeat_age_s"],
          r["current_job_id"], r["sent_count"], r["failed_count"], r["host"]] for r in rs]))
