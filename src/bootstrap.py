"""Starting the service on any machine: the database (a private one when DATABASE_URL is not
set), migrations, the development API key, and the ready line."""
from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import pymysql

from mailjobs import api_keys, defaults
from mailjobs.dao_mysql import Dao
from mailjobs.db import guard as db_guard
from mailjobs.db.local_mariadb import LocalMariaDB
from mailjobs.db.migrations import applied_versions, apply_migrations, discover
from mailjobs.settings import PROJECT_ROOT, Settings

log = logging.getLogger("mailjobs")
DEV_KEY_FILE = PROJECT_ROOT / "var" / "dev_api_key"


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def json_formatter() -> logging.Formatter:
    """One JSON object per record: ts, level, logger, message, the record's `extra` fields (the
    runner's job_id, recipient_id, ...) and, for an exception, exc_info as text."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                         rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"})


def configure_logging(level: str, fmt: str = defaults.LOG_FORMAT) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    if fmt == "json":
        logging.captureWarnings(True)   # library warnings too: every line is one JSON object


class StartupError(Exception):
    """Why this process cannot start, in one sentence for the operator (no traceback)."""


def local_database() -> LocalMariaDB:
    return LocalMariaDB(PROJECT_ROOT / defaults.LOCAL_DB_DIR)


def ensure_database(settings: Settings, start: bool = True) -> Settings:
    """Return settings with a DATABASE_URL: the project-local MariaDB's when none is set.

    `start`: start it when it is not running (serve, worker, migrate), sharing it with the other
    processes of this checkout; it is stopped when the last of them exits. Without `start` (the
    other commands) it must already run.
    """
    if settings.database_url:
        return settings
    local = local_database()
    if start:
        started = local.use()
        atexit.register(local.release)
    elif local.pid() is None:
        raise StartupError("DATABASE_URL is not set and the project-local MariaDB (var/mariadb) "
                           "is not running: start the service (make run) or set DATABASE_URL")
    else:
        started = False
    local.create_database(defaults.LOCAL_DB_NAME)
    url = local.url(defaults.LOCAL_DB_NAME)
    os.environ["DATABASE_URL"] = url  # for child processes (workers) of this one
    log.info("using the project-local MariaDB at %s%s", local.socket,
             "" if started else " (already running)")
    return replace(settings, database_url=url)


def _where(settings: Settings) -> str:
    return settings.db.where()


def reach_database(settings: Settings, wait: float) -> None:
    """Connect once; while the server cannot be reached, try again with a doubling pause (each
    try logged) until `wait` seconds have passed, then raise StartupError. A refused login is
    a configuration error: no retry."""
    db, where = settings.db, _where(settings)
    deadline = time.monotonic() + wait
    pause, attempt = 0.5, 0
    while True:
        attempt += 1
        try:
            db_guard.connect(db, connect_timeout=settings.db_connect_timeout,
                             read_timeout=settings.db_connect_timeout,
                             write_timeout=settings.db_connect_timeout).close()
            if attempt > 1:
                log.info("database at %s reachable (attempt %d)", where, attempt)
            return
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else 0
            reason = exc.args[1] if len(exc.args) > 1 else str(exc)
            if code in (1044, 1045, 1698):   # access denied
                raise StartupError(f"the database at {where} refused user {db.user!r}: "
                                   f"{reason} (check DATABASE_URL)") from None
            left = deadline - time.monotonic()
            if left <= 0:
                tries = f" after {attempt} attempts in {wait:.0f} s" if attempt > 1 else ""
                raise StartupError(f"cannot reach the database at {where}{tries}: {reason} "
                                   "(check DATABASE_URL and that the server runs)") from None
            log.warning("database at %s not reachable (%s); attempt %d, next in %.1f s",
                        where, reason, attempt, min(pause, left))
            time.sleep(min(pause, left))
            pause = min(pause * 2, 5.0)


def check_schema(settings: Settings) -> None:
    """Refuse (StartupError) a database whose schema is behind or ahead of this code; only
    `mailjobs migrate` and `mailjobs serve` change it."""
    applied = applied_versions(settings.db, settings.db_connect_timeout)
    known = {m.version for m in discover()}
    latest = max(known)
    name = settings.db.database
    if applied is None:
        raise StartupError(f"database {name!r} has no mailjobs schema yet: run `mailjobs "
                           "migrate` (`mailjobs serve` migrates too)")
    if applied - known:
        raise StartupError(f"database {name!r} has migration {max(applied):03d}, newer than this "
                           f"mailjobs ({latest:03d}): upgrade mailjobs on this host")
    if known - applied:
        raise StartupError(f"database {name!r} is at migration {max(applied, default=0):03d}, this "
                           f"mailjobs needs {latest:03d}: run `mailjobs migrate`")


def migrate(settings: Settings) -> None:
    for migration in apply_migrations(settings.db):
        log.info("applied migration %03d_%s", migration.version, migration.name)


# What deploy/production.env.example and the docs write where a secret goes, and values no one
# chose at random. A real SECRET_KEY is `secrets.token_urlsafe(32)` (43 characters).
_PLACEHOLDER = re.compile(r"change[-_ ]?(me|this|it)|replace[-_ ]?(me|this)|<[^>]*>|"
                          r"\A(x+|secret|password|todo|example|dev|test|default)\Z", re.I)
MIN_SECRET_CHARS = 32


def local_database_url() -> str:
    return local_database().url(defaults.LOCAL_DB_NAME)


def development_mode(settings: Settings) -> bool:
    """Development mode: DEVELOPMENT=1, or the project-local database (DATABASE_URL unset, or
    the URL of that database, which `make run` hands to its own child processes)."""
    return settings.development or settings.database_url in (None, "", local_database_url())


def _weak(value: str) -> bool:
    return bool(_PLACEHOLDER.search(value)) or len(set(value)) < 8


def secret_problems(settings: Settings) -> list[str]:
    """What is wrong with SECRET_KEY and TOKEN_ENCRYPTION_KEY (unset is fine: a random key is
    generated into var/ on first use)."""
    problems = []
    secret = settings.secret_key
    if secret and (len(secret) < MIN_SECRET_CHARS or _weak(secret)):
        problems.append(f"SECRET_KEY is a placeholder or shorter than {MIN_SECRET_CHARS} "
                        "characters")
    token_key = settings.token_encryption_key
    if token_key:
        from cryptography.fernet import Fernet

        try:
            Fernet(token_key.encode())
            valid = not _weak(token_key)
        except (ValueError, TypeError):
            valid = False
        if not valid:
            problems.append("TOKEN_ENCRYPTION_KEY is a placeholder or not a Fernet key")
    return problems


def check_production_settings(settings: Settings) -> None:
    """Refuse to start outside development mode with a placeholder or weak secret: raises
    ValueError with one sentence saying what to set. In development mode it only warns."""
    problems = secret_problems(settings)
    if not problems:
        return
    what = " and ".join(problems)
    if development_mode(settings):
        log.warning("%s; accepted only because this is development mode", what)
        return
    raise ValueError(
        f"refusing to start: {what}; generate SECRET_KEY with `python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))'` and TOKEN_ENCRYPTION_KEY with `python -c 'from "
        "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'` (or set "
        "DEVELOPMENT=1 on a development machine)")


def dev_key_file(settings: Settings) -> Path:
    """var/dev_api_key for the project-local database; one file per other DATABASE_URL, so
    pointing `serve` at another database never overwrites the local key."""
    if settings.database_url in (None, local_database_url()):
        return DEV_KEY_FILE
    digest = hashlib.sha256((settings.database_url or "").encode()).hexdigest()[:8]
    return DEV_KEY_FILE.with_name(f"dev_api_key.{digest}")


def dev_api_key(dao: Dao, key_file: Path = DEV_KEY_FILE) -> str:
    """The development key kept in key_file, created (may send as anyone) when missing. Only
    for development mode (`serve` checks development_mode first)."""
    verifier = api_keys.KeyVerifier(dao)
    if key_file.exists():
        key = key_file.read_text().strip()
        if verifier.verify(key) is not None:
            return key
    issued = api_keys.create_key(dao, "development", ["*"], operator=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # 0600 from the start
    with os.fdopen(fd, "w") as handle:
        handle.write(issued.key + "\n")
    log.info("created development API key %d (saved in %s)", issued.id, key_file)
    return issued.key


def ready_line(settings: Settings, key: str | None) -> str:
    base = f"http://{settings.host}:{settings.port}"
    if key is None:
        return (f"mailjobs is ready on {base}\n"
                "  no development key (DATABASE_URL is not the project-local database): create "
                "one with `mailjobs api-key create --name NAME --sender ADDRESS`")
    body = ('{"sender_email": "dev@example.com", "from_name": "Dev", '
            '"template": {"subject": "Hello {{ name }}", "text": "Hi {{ name }}, this is mailjobs."}, '
            '"recipients": [{"email": "you@example.com", "name": "You"}]}')
    return (f"mailjobs is ready on {base}\n"
            f"  API key (development): {key}\n"
            f"  test send:\n"
            f"    curl -s -X POST {base}/api/jobs/send_template_emails "
            f"-H 'X-API-Key: {key}' -H 'Content-Type: application/json' -d '{body}'\n"
            f"  then: curl -s -H 'X-API-Key: {key}' {base}/api/jobs/<job_id>")
