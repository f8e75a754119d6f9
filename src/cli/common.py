"""What the `mailjobs` commands share: the settings and database of an operator's command, and
the two output forms (--json for scripts, aligned tables for people)."""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from mailjobs import bootstrap
from mailjobs.cli.backend import Backend, BackendError, LocalBackend, RemoteBackend
from mailjobs.dao_mysql import Dao
from mailjobs.settings import Settings

json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")


def database_settings(ctx: click.Context, start_local: bool = False) -> Settings:
    """The settings with a DATABASE_URL: without one, the project-local MariaDB's (started
    only for serve, worker and migrate; other commands need it running)."""
    settings: Settings = ctx.obj["settings"]
    if not settings.database_url:
        settings = bootstrap.ensure_database(settings, start=start_local)
        ctx.obj["settings"] = settings
    return settings


def operator_dao(ctx: click.Context) -> Dao:
    """For the operators' commands: the database tried once, its schema checked, never
    migrated (an operator's newer CLI must not change the production schema)."""
    settings = database_settings(ctx)
    bootstrap.reach_database(settings, wait=0)
    bootstrap.check_schema(settings)
    return Dao(settings)


def emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=None, default=str))
    else:
        human(data)


def table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(c) if c is not None else "-" for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def backend(ctx: click.Context) -> Backend:
    url, key = ctx.obj.get("url"), ctx.obj.get("key")
    if url:
        if not key:
            raise click.ClickException("--url needs an API key: --key or MAILJOBS_API_KEY")
        return RemoteBackend(url, key)
    return LocalBackend(database_settings(ctx), operator_dao(ctx))


def run(ctx: click.Context, call: Callable[[Backend], Any]) -> Any:
    try:
        return call(backend(ctx))
    except BackendError as exc:
        raise click.ClickException(str(exc)) from None


def key_id(dao: Dao, id_or_prefix: str) -> int:
    """An API key given by its id or its prefix (mj_<prefix>_…), as operators copy it."""
    wanted = id_or_prefix.removeprefix("mj_").split("_")[0]
    for k in dao.api_keys():
        if str(k.id) == wanted or k.prefix == wanted:
            return k.id
    raise click.ClickException(f"no API key with id or prefix {id_or_prefix}")
