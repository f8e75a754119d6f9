"""The `mailjobs` command line (click)."""
from __future__ import annotations

import json
import sys

import click

import api_keys
import bootstrap
from dao_mysql import Dao, DaoError
from settings import Settings, load_settings


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj["settings"]
    if not settings.database_url:
        settings = bootstrap.ensure_database(settings)
        ctx.obj["settings"] = settings
    return settings


def _dao(ctx: click.Context) -> Dao:
    settings = _settings(ctx)
    bootstrap.migrate(settings)
    return Dao(settings)


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """mailjobs: templated bulk email through Gmail, queued in MySQL."""
    settings = load_settings()
    bootstrap.configure_logging(settings.log_level)
    ctx.ensure_object(dict)
    ctx.obj["settings"] = settings


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Start the API (and, when DATABASE_URL is unset, a project-local MariaDB)."""
    from waitress import serve as waitress_serve

    from api_server import create_app

    settings = _settings(ctx)
    bootstrap.migrate(settings)
    dao = Dao(settings)
    key = bootstrap.dev_api_key(dao)
    app = create_app(settings, dao)
    click.echo(bootstrap.ready_line(settings, key), err=True)
    waitress_serve(app, host=settings.host, port=settings.port, threads=settings.http_threads,
                   max_request_body_size=settings.max_request_bytes + 1024,
                   ident="mailjobs", clear_untrusted_proxy_headers=True)


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Apply pending schema migrations from sql/."""
    settings = _settings(ctx)
    bootstrap.migrate(settings)
    click.echo("migrations up to date")


@cli.group("api-key")
def api_key() -> None:
    """Create, list and revoke API keys."""


@api_key.command("create")
@click.option("--name", required=True, help="who or what uses the key")
@click.option("--sender", "senders", multiple=True,
              help="address the key may send as: exact, *@domain or * (repeatable)")
@click.option("--operator", is_flag=True, help="may read and control every key's jobs")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def api_key_create(ctx: click.Context, name: str, senders: tuple[str, ...], operator: bool,
                   as_json: bool) -> None:
    """Create a key and print it once (only its hash is stored)."""
    issued = api_keys.create_key(_dao(ctx), name, list(senders), operator)
    if as_json:
        click.echo(json.dumps({"id": issued.id, "key": issued.key, "name": name,
                               "senders": list(senders), "operator": operator}))
        return
    click.echo(issued.key)
    click.echo(f"key {issued.id} '{name}' created; store it now, it is not shown again", err=True)
    if not senders:
        click.echo("warning: no --sender given, so this key may not send mail", err=True)


@api_key.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def api_key_list(ctx: click.Context, as_json: bool) -> None:
    """List keys (never the secrets)."""
    keys = _dao(ctx).api_keys()
    rows = [{"id": k.id, "name": k.name, "prefix": f"mj_{k.prefix}_…", "senders": k.allowed_senders,
             "operator": k.is_operator, "created_at": str(k.created_at),
             "last_used_at": str(k.last_used_at or ""), "revoked": k.revoked_at is not None}
            for k in keys]
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'ID':>4}  {'NAME':<20} {'PREFIX':<16} {'OPERATOR':<8} {'REVOKED':<7} SENDERS")
    for r in rows:
        click.echo(f"{r['id']:>4}  {r['name'][:20]:<20} {r['prefix']:<16} "
                   f"{'yes' if r['operator'] else 'no':<8} {'yes' if r['revoked'] else 'no':<7} "
                   f"{', '.join(r['senders'])}")


@api_key.command("revoke")
@click.argument("key_id")
@click.pass_context
def api_key_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by id or prefix; it stops working at once."""
    if not _dao(ctx).revoke_api_key(key_id.removeprefix("mj_").split("_")[0]):
        raise click.ClickException(f"no active key with id or prefix {key_id}")
    click.echo(f"key {key_id} revoked")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="mailjobs", standalone_mode=True)
    except DaoError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
