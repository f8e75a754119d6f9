"""`mailjobs webhooks list|deliveries|retry`: webhook endpoints and their deliveries, straight
in the database (like `suppressions`; operators only, so no --url mode)."""
from __future__ import annotations

from typing import Any

import click

from mailjobs.cli.common import emit, json_option, key_id, operator_dao, table
from mailjobs.web.views import keyset_page
from mailjobs.webhooks.routes import delivery_view, webhook_view

commands = click.Group("webhooks")   # registered on the `mailjobs` group by cli.main


@commands.group()
def webhooks() -> None:
    """Endpoints that receive signed job and recipient events, and their deliveries."""


@webhooks.command("list")
@click.option("--api-key", "api_key", metavar="ID|PREFIX", help="only this key's endpoints")
@click.option("--limit", default=100, show_default=True)
@click.option("--after", default=0, help="next_after of the previous page")
@json_option
@click.pass_context
def webhooks_list(ctx: click.Context, api_key: str | None, limit: int, after: int,
                  as_json: bool) -> None:
    """Endpoints, oldest first: enabled or why not, failing since when."""
    dao = operator_dao(ctx)
    owner = key_id(dao, api_key) if api_key else None
    rows, next_after = keyset_page(dao.webhooks_page(owner, after, limit + 1), limit,
                                   cursor=lambda w: w["id"])
    page = {"webhooks": [webhook_view(w) for w in rows], "next_after": next_after}

    def human(p: dict[str, Any]) -> None:
        table(["ID", "KEY", "URL", "BATCH", "ENABLED", "FAILING_SINCE", "REASON"],
               [[w["id"], w["api_key_id"], w["url"], w["batch_size"],
                 "yes" if w["enabled"] else "NO", (w["failing_since"] or "-")[:19],
                 (w["disabled_reason"] or "")[:60]] for w in p["webhooks"]])
        if p["next_after"]:
            click.echo(f"more: --after {p['next_after']}")
    emit(page, as_json, human)


@webhooks.command("deliveries")
@click.argument("webhook_id", type=int)
@click.option("--limit", default=100, show_default=True)
@click.option("--before", type=int, help="next_before of the previous page")
@json_option
@click.pass_context
def webhooks_deliveries(ctx: click.Context, webhook_id: int, limit: int, before: int | None,
                        as_json: bool) -> None:
    """An endpoint's deliveries, newest first: attempts, last answer, next try."""
    dao = operator_dao(ctx)
    if dao.webhook(webhook_id) is None:
        raise click.ClickException(f"no webhook {webhook_id}")
    rows, next_before = keyset_page(dao.webhook_deliveries(webhook_id, before, limit + 1),
                                    limit, cursor=lambda d: d["id"])
    page = {"deliveries": [delivery_view(d) for d in rows], "next_before": next_before}

    def human(p: dict[str, Any]) -> None:
        table(["ID", "WEBHOOK_ID", "STATUS", "EVENTS", "ATTEMPTS", "CODE", "LAST_ATTEMPT",
                "NEXT", "ERROR"],
               [[d["id"], d["webhook_id"], d["status"], d["events"], d["attempts"],
                 d["last_status_code"] or "-", (d["last_attempt_at"] or "-")[:19],
                 (d["next_attempt_at"] or "-")[:19] if d["status"] == "pending" else "-",
                 (d["last_error"] or "")[:50]] for d in p["deliveries"]])
        if p["next_before"]:
            click.echo(f"more: --before {p['next_before']}")
    emit(page, as_json, human)


@webhooks.command("retry")
@click.argument("webhook_id", type=int)
@click.argument("delivery_id", type=int)
@json_option
@click.pass_context
def webhooks_retry(ctx: click.Context, webhook_id: int, delivery_id: int,
                   as_json: bool) -> None:
    """Send a delivery again now; its endpoint is enabled again."""
    dao = operator_dao(ctx)
    if not dao.retry_webhook_delivery(webhook_id, delivery_id):
        raise click.ClickException(f"no delivery {delivery_id} of webhook {webhook_id}")
    delivery = dao.webhook_delivery(delivery_id)
    assert delivery is not None     # retry_webhook_delivery found it
    emit(delivery_view(delivery), as_json, lambda d: click.echo(
        f"delivery {d['id']} ({d['webhook_id']}) is due now; webhook {webhook_id} enabled"))
