"""`mailjobs purge [--dry-run]`: data retention by hand (runners also purge, once per
PURGE_INTERVAL). Talks to the database directly; the settings (RETENTION_DAYS,
JOB_RETENTION_DAYS, PURGE_BATCH, PURGE_PAUSE) come from the environment like every command's."""
from __future__ import annotations

import json

import click

from mailjobs import retention
from mailjobs.cli.common import operator_dao

_ROWS = (("recipients_erased", "recipients' variables erased", "erase", "RETENTION_DAYS"),
         ("jobs_erased", "  in jobs", "erase", "RETENTION_DAYS"),
         ("jobs_deleted", "jobs deleted", "delete", "JOB_RETENTION_DAYS"),
         ("recipients_deleted", "  with recipients", "delete", "JOB_RETENTION_DAYS"),
         ("bounce_messages_deleted", "bounce messages deleted", "erase", "RETENTION_DAYS"),
         ("runners_deleted", "dead runner rows deleted", "runners", "no heartbeat for a day"))

commands = click.Group("retention")   # registered on the `mailjobs` group by cli.main


@commands.command("purge")
@click.option("--dry-run", is_flag=True, help="show what would go (counts and cut-offs), "
              "change nothing")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@click.pass_context
def purge_cmd(ctx: click.Context, dry_run: bool, as_json: bool) -> None:
    """Erase old recipients' variables, delete old jobs (JOB_RETENTION_DAYS), bounce messages
    and dead runners' rows, in small batches. Suppressions are never purged."""
    if ctx.obj.get("url"):
        raise click.ClickException("purge talks to the database directly: run it without --url")
    dao = operator_dao(ctx)
    result = retention.purge(dao.settings, dao, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    cut = result.cutoffs
    s = dao.settings
    days = {"RETENTION_DAYS": s.retention_days, "JOB_RETENTION_DAYS": s.job_retention_days}
    click.echo(("would go (dry run, nothing changed):" if dry_run else "purged:")
               + f" database time {cut.now:%Y-%m-%d %H:%M:%S}Z")
    click.echo(f"{'KIND':<30} {'COUNT':>9}  CUT-OFF")
    for kind, label, which, setting in _ROWS:
        when = getattr(cut, which)
        if when is None:
            note = f"off ({setting}=0)"
        elif setting in days:
            note = (f"finished before {when:%Y-%m-%d %H:%M}Z ({setting}={days[setting]})"
                    if which == "delete" or kind != "bounce_messages_deleted"
                    else f"processed before {when:%Y-%m-%d %H:%M}Z ({setting}={days[setting]})")
        else:
            note = f"heartbeat before {when:%Y-%m-%d %H:%M}Z ({setting})"
        click.echo(f"{label:<30} {result.counts[kind]:>9}  {note}")
    if not dry_run:
        click.echo(f"{result.batches} batch(es) in {result.seconds:.1f} s, longest "
                   f"{result.longest_batch * 1000:.0f} ms; suppressions are never purged")
