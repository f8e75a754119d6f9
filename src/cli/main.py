"""The `mailjobs` command line (click)."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from mailjobs import api_keys, bootstrap, defaults, entry, memory, metrics
from mailjobs.cli import jobs as cli_jobs
from mailjobs.cli import retention as cli_retention
from mailjobs.cli import suppressions as cli_suppressions
from mailjobs.cli import webhooks as cli_webhooks
from mailjobs.cli.common import database_settings, emit, operator_dao, run, table
from mailjobs.dao_mysql import Dao, DaoError
from mailjobs.db.local_mariadb import LocalDatabaseError
from mailjobs.db.migrations import MigrationError
from mailjobs.job_runner import EmbeddedRunner, JobRunner
from mailjobs.settings import Settings, load_settings
from mailjobs.transports import factory as transports


def _service_dao(ctx: click.Context, migrate: bool) -> Dao:
    """For serve (migrate) and worker (schema checked): the database waited for up to
    STARTUP_DB_WAIT, with a stop signal honoured at each step (entry.check)."""
    settings = database_settings(ctx, start_local=True)
    entry.check()
    bootstrap.reach_database(settings, wait=settings.startup_db_wait)
    entry.check()
    if migrate:
        bootstrap.migrate(settings)
    else:
        bootstrap.check_schema(settings)
    entry.check()
    return Dao(settings)


@click.group()
@click.version_option(package_name="mailjobs", prog_name="mailjobs")
@click.option("--url", envvar="MAILJOBS_URL",
              help="talk to this mailjobs API instead of the database (env MAILJOBS_URL)")
@click.option("--key", envvar="MAILJOBS_API_KEY", help="API key for --url (env MAILJOBS_API_KEY)")
@click.pass_context
def cli(ctx: click.Context, url: str | None, key: str | None) -> None:
    """mailjobs: templated bulk email through Gmail, queued in MySQL."""
    try:
        settings = load_settings()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    bootstrap.configure_logging(settings.log_level, settings.log_format)
    ctx.ensure_object(dict)
    ctx.obj.update(settings=settings, url=url, key=key)


def _refuse_weak_secrets(ctx: click.Context) -> None:
    try:
        bootstrap.check_production_settings(ctx.obj["settings"])
    except ValueError as exc:
        raise bootstrap.StartupError(str(exc)) from None


def _interrupt() -> None:
    raise KeyboardInterrupt("stop signal")


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Start the API (and, when DATABASE_URL is unset, a project-local MariaDB)."""
    from waitress import create_server

    from mailjobs.api_server import create_app
    from mailjobs.web import errors as http_errors
    from mailjobs.web import lanes as http_lanes

    _refuse_weak_secrets(ctx)
    memory.fix_mmap_threshold()
    development = bootstrap.development_mode(ctx.obj["settings"])
    dao = _service_dao(ctx, migrate=True)
    settings = dao.settings
    # The development operator key (may send as anyone) only for the project-local database or
    # with DEVELOPMENT=1, never silently against another DATABASE_URL.
    key = bootstrap.dev_api_key(dao, bootstrap.dev_key_file(settings)) if development else None
    transports.announce(settings)
    embedded = None
    if settings.embedded_runner:   # made now, started once the port is bound
        factory = transports.transport_factory(settings, dao)
        embedded = EmbeddedRunner(lambda: JobRunner(settings, dao, factory, kind="embedded"))
    app = create_app(settings, dao, runs_runner=embedded is not None,
                     on_enqueue=embedded.wake if embedded is not None else None)
    try:
        # Bound before "ready" is printed: a port in use is one sentence, not a traceback after
        # the ready line.
        server = create_server(app, host=settings.host, port=settings.port,
                               threads=settings.http_threads,
                               max_request_body_size=max(settings.max_request_bytes,
                                                         settings.attachment_max_bytes) + 1024,
                               ident="mailjobs", clear_untrusted_proxy_headers=True,
                               outbuf_high_watermark=defaults.HTTP_OUTBUF_HIGH_WATERMARK,
                               _dispatcher=http_lanes.dispatcher(settings.http_threads))
    except OSError as exc:
        raise bootstrap.StartupError(f"cannot listen on {settings.host}:{settings.port}: "
                                     f"{exc.strerror or exc} (set HOST and PORT)") from None
    http_errors.json_errors(server)   # a 413 from waitress itself is JSON too
    try:
        # From here a stop signal returns from the server like Ctrl-C; then the embedded runner
        # finishes the messages in hand and releases its claims, then atexit handlers (the
        # local MariaDB's clean shutdown) run. A second signal exits at once (entry.py).
        entry.running(_interrupt)
        if embedded is not None:
            embedded.start()
        click.echo(bootstrap.ready_line(settings, key), err=True)
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        if embedded is not None:
            embedded.stop()


@cli.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a standalone JobRunner (any number of them may share one database)."""
    _refuse_weak_secrets(ctx)
    memory.fix_mmap_threshold()
    dao = _service_dao(ctx, migrate=False)
    settings = dao.settings
    metrics.configure(settings.metrics_sender_labels)
    transports.announce(settings)
    runner = JobRunner(settings, dao, transports.transport_factory(settings, dao), kind="worker")
    metrics.serve_worker_metrics(settings.metrics_port, settings.host)
    entry.running(runner.stop)   # a stop signal from here on is a warm stop
    runner.run()


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Apply pending schema migrations from sql/."""
    settings = database_settings(ctx, start_local=True)
    bootstrap.reach_database(settings, wait=settings.startup_db_wait)
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
@click.option("--max-priority", type=click.Choice(["high", "normal", "low"]), default="high",
              show_default=True, help="the highest job priority this key may ask for")
@click.option("--test", "test_mode", type=click.Choice(api_keys.TEST_MODES), is_flag=False,
              flag_value="outbox", default=None,
              help="a test key: its jobs run everything but never reach a real transport; "
                   "--test writes their messages to the outbox directory, --test=null "
                   "discards them")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def api_key_create(ctx: click.Context, name: str, senders: tuple[str, ...], operator: bool,
                   max_priority: str, test_mode: str | None, as_json: bool) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from mailjobs.scheduling import PRIORITIES

    issued = api_keys.create_key(operator_dao(ctx), name, list(senders), operator,
                                 PRIORITIES[max_priority], test_mode)
    if as_json:
        click.echo(json.dumps({"id": issued.id, "key": issued.key, "name": name,
                               "senders": list(senders), "operator": operator,
                               "test": test_mode}))
        return
    click.echo(issued.key)
    click.echo(f"key {issued.id} '{name}' created; store it now, it is not shown again", err=True)
    if test_mode:
        where = ("messages go to the outbox directory" if test_mode == "outbox"
                 else "messages are discarded")
        click.echo(f"test key: its jobs send no mail ({where})", err=True)
    if not senders:
        click.echo("warning: no --sender given, so this key may not send mail", err=True)


@api_key.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def api_key_list(ctx: click.Context, as_json: bool) -> None:
    """List keys (never the secrets)."""
    keys = operator_dao(ctx).api_keys()
    rows: list[dict[str, Any]] = [{"id": k.id, "name": k.name, "prefix": f"mj_{k.prefix}_…", "senders": k.allowed_senders,
             "operator": k.is_operator, "created_at": str(k.created_at),
             "last_used_at": str(k.last_used_at or ""), "revoked": k.revoked_at is not None,
             "test": k.test_mode}
            for k in keys]
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'ID':>4}  {'NAME':<20} {'PREFIX':<16} {'OPERATOR':<8} {'REVOKED':<7} "
               f"{'TEST':<6} SENDERS")
    for r in rows:
        click.echo(f"{r['id']:>4}  {r['name'][:20]:<20} {r['prefix']:<16} "
                   f"{'yes' if r['operator'] else 'no':<8} {'yes' if r['revoked'] else 'no':<7} "
                   f"{r['test'] or 'no':<6} {', '.join(r['senders'])}")


@api_key.command("revoke")
@click.argument("key_id")
@click.pass_context
def api_key_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by id or prefix; it stops working at once."""
    if not operator_dao(ctx).revoke_api_key(key_id.removeprefix("mj_").split("_")[0]):
        raise click.ClickException(f"no active key with id or prefix {key_id}")
    click.echo(f"key {key_id} revoked")


GMAIL_SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"
GMAIL_READ_SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
# users.settings.sendAs.list: the verified addresses a sender may send as (send_as.py)
GMAIL_SETTINGS_SCOPE = "https://www.googleapis.com/auth/gmail.settings.basic"


@cli.command()
@click.argument("sender")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False),
              help="import an authorized-user JSON (the token.json Google's quickstart writes)")
@click.option("--port", default=0, show_default=True,
              help="local port of the OAuth redirect (0: any free port)")
@click.option("--service-account", "service_account", type=click.Path(exists=True,
              dir_okay=False), help="a Google service-account key (JSON) with domain-wide "
              "delegation: send as SENDER, or as every address of a domain with "
              "SENDER '*@example.org', without each one's consent")
@click.pass_context
def auth(ctx: click.Context, sender: str, token_file: str | None, port: int,
         service_account: str | None) -> None:
    """Authorise SENDER's Gmail account and store its token (encrypted) in the database.

    With --service-account KEY.json, store that key instead (encrypted the same way): SENDER
    (or each address of '*@domain') is then sent as through domain-wide delegation.

    Asks for gmail.send and gmail.settings.basic (to read the verified send-as addresses,
    read at once with the Gmail transport), plus gmail.readonly when IN_DOUBT_POLICY is check or auto (to look
    an interrupted send up by its Message-ID) or BOUNCE_CHECK_INTERVAL is not 0 (to read
    bounces).
    """
    from mailjobs.transports.credentials import CredentialStore
    from mailjobs.transports.gmail import credentials_to_info

    settings = database_settings(ctx)
    dao = operator_dao(ctx)
    if service_account:
        _auth_service_account(settings, dao, sender, service_account)
        return
    if token_file:
        info = json.loads(open(token_file).read())
        if not info.get("refresh_token"):
            raise click.ClickException(f"{token_file} has no refresh_token")
    else:
        if not settings.google_client_secrets:
            raise click.ClickException("set GOOGLE_CLIENT_SECRETS to your OAuth client JSON "
                                       "(see README: Connecting a real Gmail account)")
        from google_auth_oauthlib.flow import InstalledAppFlow

        scopes = [GMAIL_SEND_SCOPE, GMAIL_SETTINGS_SCOPE]
        if settings.reads_mailbox:
            scopes.append(GMAIL_READ_SCOPE)   # also lets bounce checks read DSNs (bounces.py)
            click.echo(f"IN_DOUBT_POLICY={settings.in_doubt_policy}: also asking for gmail.readonly, "
                       "so an interrupted send can be looked up by its Message-ID instead of "
                       "being sent twice, and bounces can be read back (IN_DOUBT_POLICY=resend "
                       "or hold with BOUNCE_CHECK_INTERVAL=0 skips it)", err=True)
        flow = InstalledAppFlow.from_client_secrets_file(settings.google_client_secrets,
                                                         scopes=scopes)
        click.echo(f"Sign in as {sender} at the URL below. On a headless server, forward the "
                   "port first (ssh -L PORT:127.0.0.1:PORT) and pass --port PORT.", err=True)
        creds = flow.run_local_server(host="127.0.0.1", port=port, open_browser=False,
                                      authorization_prompt_message="{url}")
        info = credentials_to_info(creds)
    resumed = CredentialStore(settings, dao).store_info(sender, info, resume=True)
    click.echo(f"stored Gmail credentials for {sender}"
               + (f"; {resumed} paused job(s) resumed" if resumed else ""))
    _read_send_as(settings, dao, sender)


SERVICE_ACCOUNT_FIELDS = ("type", "client_email", "private_key", "token_uri")


def _auth_service_account(settings: Settings, dao: Dao, pattern: str, key_file: str) -> None:
    """`mailjobs auth SENDER --service-account KEY.json`: check and store the key."""
    from mailjobs.deliverability.addresses import InvalidAddress, normalize_address
    from mailjobs.transports.credentials import CredentialStore

    pattern = pattern.strip().lower()
    try:
        if pattern.startswith("*@"):
            normalize_address("postmaster" + pattern[1:])   # a domain an address may have
        else:
            pattern = normalize_address(pattern).lower()
    except InvalidAddress as exc:
        raise click.ClickException(f"{pattern!r}: give an address or '*@domain' ({exc})") from None
    try:
        info = json.loads(open(key_file, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{key_file} is not a JSON key file: {exc}") from None
    missing = [f for f in SERVICE_ACCOUNT_FIELDS if not isinstance(info, dict) or not info.get(f)]
    if missing or info.get("type") != "service_account":
        raise click.ClickException(f"{key_file} is not a service-account key (type "
                                   f"service_account with {', '.join(SERVICE_ACCOUNT_FIELDS)}); "
                                   "create one in the Cloud console: IAM > Service accounts > "
                                   "Keys > Add key > JSON")
    scopes = [GMAIL_SEND_SCOPE, GMAIL_SETTINGS_SCOPE]
    if settings.reads_mailbox:
        scopes.append(GMAIL_READ_SCOPE)
    resumed = CredentialStore(settings, dao).store_delegated(pattern, info, scopes)
    click.echo(f"stored the service account {info['client_email']} for {pattern}"
               + (f"; {resumed} paused job(s) resumed" if resumed else ""))
    click.echo(f"It sends only once a Workspace super admin has allowed it: Admin console > "
               f"Security > API controls > Domain-wide delegation > Add new, client ID "
               f"{info.get('client_id', '(the key file has no client_id)')}, OAuth scopes "
               f"{','.join(scopes)}", err=True)
    if not pattern.startswith("*@"):
        _read_send_as(settings, dao, pattern)


def _read_send_as(settings: Settings, dao: Dao, sender: str) -> None:
    """Read the sender's verified send-as addresses now (send_as.py); runners read them again
    every SEND_AS_CHECK_INTERVAL. A failure is reported, never fatal: the credentials are
    stored, and until a list is known a POST is not checked against it."""
    from mailjobs.transports import send_as
    from mailjobs.transports.base import SendError
    from mailjobs.transports.factory import transport_factory

    if settings.transport_name != "gmail":
        click.echo(f"send-as addresses not read (MAIL_TRANSPORT is {settings.transport_name}); "
                   "a runner with the Gmail transport reads them", err=True)
        return
    transport = transport_factory(settings, dao)()
    try:
        allowed = send_as.read(settings, dao, transport, sender)   # type: ignore[arg-type]
    except SendError as exc:
        click.echo(f"could not read the send-as addresses of {sender}: {exc}", err=True)
        return
    finally:
        transport.close()
    click.echo(f"{sender} may send as: {', '.join(allowed) or '(none verified)'}")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def senders(ctx: click.Context, as_json: bool) -> None:
    """List senders: limits, today's use, authorisation state, deferrals."""
    if ctx.invoked_subcommand:
        return
    emit(run(ctx, lambda b: b.senders()), as_json, lambda rows: table(
        ["SENDER", "AUTH", "RATE/MIN", "SENT_24H", "DAILY_CAP", "PAUSED_UNTIL"],
        [[r["email"], r["auth_state"], r["rate_per_minute"] or "unlimited", r["sent_24h"],
          r["daily_cap"] or "unlimited", r["paused_until"]] for r in rows]))
    if not as_json:
        caps = [c for c in run(ctx, lambda b: b.learned_caps()) if c["lowered"]]
        if caps:
            click.echo(f"\n{len(caps)} cap(s) lowered after refusals (mailjobs senders caps):")
            _caps_table(caps)


def _caps_table(caps: list[dict[str, Any]]) -> None:
    table(["KIND", "TARGET", "CAP", "CONFIGURED", "LOWERED_AT", "HOLD_UNTIL", "REASON"],
          [[c["kind"], c["target"], c["cap"], c["configured"], c["lowered_at"],
            c["hold_until"] or "-", c["reason"][:80]] for c in caps])


@senders.command("caps")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def senders_caps(ctx: click.Context, as_json: bool) -> None:
    """Caps learned from refusals: SMTP connections per server, Gmail concurrent sends per
    sender (lowered when the far side refused; raised again after successful sends)."""
    emit(run(ctx, lambda b: b.learned_caps()), as_json, _caps_table)


@senders.command("reset-cap")
@click.argument("kind", type=click.Choice(["smtp", "gmail"]))
@click.argument("target")
@click.pass_context
def senders_reset_cap(ctx: click.Context, kind: str, target: str) -> None:
    """Forget a learned cap (TARGET: host:port or the sender): back to the configured value at
    every runner's next refresh, lowered again by the next refusal."""
    if not operator_dao(ctx).forget_learned_cap(kind, target):
        raise click.ClickException(f"no learned cap for {kind} {target}")
    click.echo(f"{kind} {target}: learned cap forgotten; the configured value applies")


@senders.command("set")
@click.argument("sender")
@click.option("--rate", type=int, help="sends per minute (0: unlimited)")
@click.option("--daily-cap", type=int, help="sends per rolling 24 h (0: unlimited)")
@click.pass_context
def senders_set(ctx: click.Context, sender: str, rate: int | None, daily_cap: int | None) -> None:
    """Override the rate and daily cap of one sender (unset options use the defaults)."""
    operator_dao(ctx).set_sender_limits(sender, rate, daily_cap)
    click.echo(f"{sender}: rate {rate if rate is not None else 'default'}/min, "
               f"daily cap {daily_cap if daily_cap is not None else 'default'}")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="mailjobs", standalone_mode=True)
    except (DaoError, bootstrap.StartupError, LocalDatabaseError, MigrationError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


for module in (cli_jobs, cli_retention, cli_suppressions, cli_webhooks):
    for name, command in module.commands.commands.items():
        cli.add_command(command, name)

if __name__ == "__main__":
    main()
