"""`mailjobs suppressions list|add|remove`: an API key's suppression list, straight in the
database (like `api-key` and `senders set`; operators only, so no --url mode)."""
from __future__ import annotations

from typing import Any

import click

from mailjobs.cli.common import emit, json_option, key_id, operator_dao, table
from mailjobs.deliverability.addresses import InvalidAddress, normalize_address
from mailjobs.records import SUPPRESSION_REASONS
from mailjobs.web.views import keyset_page, suppression_view

api_key_option = click.option("--api-key", "api_key", required=True, metavar="ID|PREFIX",
                              help="the API key whose list it is (id or prefix, as in "
                                   "`mailjobs api-key list`)")


commands = click.Group("suppressions")   # registered on the `mailjobs` group by cli.main


@commands.group()
def suppressions() -> None:
    """Addresses an API key's jobs never send to (unsubscribed, bounced, added by hand)."""


@suppressions.command("list")
@api_key_option
@click.option("--reason", type=click.Choice(SUPPRESSION_REASONS))
@click.option("--limit", default=100, show_default=True)
@click.option("--after", default=0, help="next_after of the previous page")
@json_option
@click.pass_context
def suppressions_list(ctx: click.Context, api_key: str, reason: str | None, limit: int,
                      after: int, as_json: bool) -> None:
    """One page of the key's list, oldest first."""
    dao = operator_dao(ctx)
    rows, next_after = keyset_page(dao.suppressions_page(key_id(dao, api_key), after, limit + 1,
                                                         reason), limit)
    page = {"suppressions": [suppression_view(x) for x in rows], "next_after": next_after}

    def human(p: dict[str, Any]) -> None:
        table(["ID", "EMAIL", "REASON", "JOB", "CREATED", "DETAIL"],
               [[s["id"], s["email"], s["reason"], s["job_id"], s["created_at"][:19],
                 (s["detail"] or "")[:60]] for s in p["suppressions"]])
        if p["next_after"]:
            click.echo(f"more: --after {p['next_after']}")
    emit(page, as_json, human)


@suppressions.command("add")
@click.argument("email")
@api_key_option
@click.option("--reason", type=click.Choice(SUPPRESSION_REASONS), default="manual",
              show_default=True)
@click.option("--detail", help="a note kept with the entry")
@json_option
@click.pass_context
def suppressions_add(ctx: click.Context, email: str, api_key: str, reason: str,
                     detail: str | None, as_json: bool) -> None:
    """Suppress EMAIL: the key's jobs store it as `suppressed` and never send to it."""
    try:
        address = normalize_address(email.strip())
    except InvalidAddress as exc:
        raise click.ClickException(f"{email} is not a valid address: {exc}") from None
    dao = operator_dao(ctx)
    entry, added = dao.add_suppression(key_id(dao, api_key), address, reason,
                                       detail=detail or "added with the mailjobs CLI")
    emit(suppression_view(entry), as_json, lambda s: click.echo(
        f"{s['email']} suppressed ({s['reason']})" if added else
        f"{s['email']} was suppressed already ({s['reason']}, {s['created_at'][:19]})"))


@suppressions.command("remove")
@click.argument("email")
@api_key_option
@click.pass_context
def suppressions_remove(ctx: click.Context, email: str, api_key: str) -> None:
    """Take EMAIL off the key's list: later jobs send to it again."""
    dao = operator_dao(ctx)
    if not dao.remove_suppression(key_id(dao, api_key), email.strip()):
        raise click.ClickException(f"{email} is not on the suppression list of key {api_key}")
    click.echo(f"{email.strip()} removed from the suppression list")
