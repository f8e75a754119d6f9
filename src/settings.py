"""Configuration read once from the environment and `.env` (python-dotenv) over `defaults`."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from mailjobs import defaults

# One FEEDBACK_LOOP_FROM entry: an address or a domain (it becomes a Gmail `from:` search term).
_FEEDBACK_FROM = r"[A-Za-z0-9._+-]+@[A-Za-z0-9.-]+|@?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+"

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: Any) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(default, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    return raw


@dataclass(frozen=True)
class DatabaseParams:
    """Keyword arguments for pymysql.connect, parsed from a DATABASE_URL.

    Several hosts may be listed (`mysql://user:pass@h1:3306,h2:3306,h3:3306/mailjobs`): the
    nodes of a Galera cluster, or a primary and its standby. Connections go to the first that
    answers (db.hosts); `host` and `port` are the first of the list."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = "root"
    password: str = ""
    database: str = "mailjobs"
    unix_socket: str | None = None
    hosts: tuple[tuple[str, int], ...] = ()
    # ?wsrep_sync_wait=N: Galera's causality checks for this service's sessions (1: reads see
    # every write the cluster committed before them, on whichever node they run)
    wsrep_sync_wait: int | None = None

    @classmethod
    def from_url(cls, url: str) -> DatabaseParams:
        """Parse `mysql://user:pass@host:port[,host:port...]/db?unix_socket=/path&wsrep_sync_wait=1`."""
        parts = urlparse(url)
        if parts.scheme not in ("mysql", "mariadb", "mysql+pymysql"):
            raise ValueError("DATABASE_URL must be a MySQL/MariaDB URL (mysql://user:password@"
                             f"host:3306/database), got one starting {parts.scheme + '://'!r}")
        items = parts.netloc.rpartition("@")[2].split(",")
        if len(items) > 1 and not all(item.strip() for item in items):
            raise ValueError(f"DATABASE_URL has an empty host in its host list: {','.join(items)!r}")
        hosts = tuple(_host_port(item) for item in items)
        query = parse_qs(parts.query)
        socket = query.get("unix_socket", [None])[0]
        sync_wait = query.get("wsrep_sync_wait", [None])[0]
        if sync_wait is not None and not sync_wait.isdigit():
            raise ValueError(f"DATABASE_URL's wsrep_sync_wait must be a number, got {sync_wait!r}")
        return cls(
            host=hosts[0][0],
            port=hosts[0][1],
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            database=(parts.path or "/").lstrip("/") or "mailjobs",
            unix_socket=socket,
            hosts=hosts,
            wsrep_sync_wait=int(sync_wait) if sync_wait is not None else None,
        )

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        return self.hosts or ((self.host, self.port),)

    def where(self) -> str:
        """Where the database is, for messages (never the password)."""
        return self.unix_socket or ",".join(f"{h}:{p}" for h, p in self.addresses)

    def init_command(self) -> str:
        """Run by every new connection: UTC, and Galera's causality checks when asked for."""
        sync = f", wsrep_sync_wait = {self.wsrep_sync_wait}" if self.wsrep_sync_wait is not None else ""
        return f"SET time_zone = '+00:00'{sync}"

    def url(self) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        query = [f"unix_socket={self.unix_socket}"] if self.unix_socket else []
        if self.wsrep_sync_wait is not None:
            query.append(f"wsrep_sync_wait={self.wsrep_sync_wait}")
        tail = f"?{'&'.join(query)}" if query else ""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses)
        return f"mysql://{auth}@{hosts}/{self.database}{tail}"


def _host_port(item: str) -> tuple[str, int]:
    """One `host[:port]` of a DATABASE_URL's host list."""
    parts = urlparse(f"//{item}")
    try:
        port = parts.port   # urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError(f"DATABASE_URL has an invalid port: {item!r}") from None
    return parts.hostname or "127.0.0.1", port or 3306


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    host: str = defaults.HOST
    port: int = defaults.PORT
    http_threads: int = defaults.HTTP_THREADS
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    max_recipients_per_job: int = defaults.MAX_RECIPIENTS_PER_JOB
    large_enqueue_concurrency: int = defaults.LARGE_ENQUEUE_CONCURRENCY
    large_body_bytes: int = defaults.LARGE_BODY_BYTES
    db_connect_timeout: int = defaults.DB_CONNECT_TIMEOUT
    db_read_timeout: int = defaults.DB_READ_TIMEOUT
    db_write_timeout: int = defaults.DB_WRITE_TIMEOUT
    db_pool_size: int = defaults.DB_POOL_SIZE
    db_pool_timeout: float = defaults.DB_POOL_TIMEOUT
    db_retry_attempts: int = defaults.DB_RETRY_ATTEMPTS
    startup_db_wait: float = defaults.STARTUP_DB_WAIT
    db_request_deadline: float = defaults.DB_REQUEST_DEADLINE
    db_ping_timeout: float = defaults.DB_PING_TIMEOUT
    db_breaker_interval: float = defaults.DB_BREAKER_INTERVAL
    db_failback_after: float = defaults.DB_FAILBACK_AFTER
    healthz_db_timeout: float = defaults.HEALTHZ_DB_TIMEOUT
    log_level: str = "INFO"
    log_format: str = defaults.LOG_FORMAT
    embedded_runner: bool = defaults.EMBEDDED_RUNNER
    expect_runners: int = defaults.EXPECT_RUNNERS
    poll_interval: float = defaults.POLL_INTERVAL
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    heartbeat_log_interval: float = defaults.HEARTBEAT_LOG_INTERVAL
    lease_seconds: int = defaults.LEASE_SECONDS
    claim_batch: int = defaults.CLAIM_BATCH
    claim_batch_max: int = defaults.CLAIM_BATCH_MAX
    runner_concurrency: int = defaults.RUNNER_CONCURRENCY
    max_attempts: int = defaults.MAX_ATTEMPTS
    retry_base_delay: float = defaults.RETRY_BASE_DELAY
    retry_max_delay: float = defaults.RETRY_MAX_DELAY
    max_defer: float = defaults.MAX_DEFER
    record_flush_rows: int = defaults.RECORD_FLUSH_ROWS
    record_flush_interval: float = defaults.RECORD_FLUSH_INTERVAL
    db_backoff_max: float = defaults.DB_BACKOFF_MAX
    in_doubt_policy: str = defaults.IN_DOUBT_POLICY
    in_doubt_check_delay: float = defaults.IN_DOUBT_CHECK_DELAY
    error_window: int = defaults.ERROR_WINDOW
    max_error_rate: float = defaults.MAX_ERROR_RATE
    template_max_bytes: int = defaults.TEMPLATE_MAX_BYTES
    template_max_nodes: int = defaults.TEMPLATE_MAX_NODES
    template_max_depth: int = defaults.TEMPLATE_MAX_DEPTH
    template_max_total_nodes: int = defaults.TEMPLATE_MAX_TOTAL_NODES
    render_timeout: float = defaults.RENDER_TIMEOUT
    render_max_bytes: int = defaults.RENDER_MAX_BYTES
    sender_rate_per_minute: int = defaults.SENDER_RATE_PER_MINUTE
    sender_burst_seconds: float = defaults.SENDER_BURST_SECONDS
    sender_daily_cap: int = defaults.SENDER_DAILY_CAP
    daily_limit_pause: float = defaults.DAILY_LIMIT_PAUSE
    warn_days: float = defaults.WARN_DAYS
    mail_transport: str = defaults.MAIL_TRANSPORT
    outbox_dir: str = defaults.OUTBOX_DIR
    gmail_api_endpoint: str = defaults.GMAIL_API_ENDPOINT
    gmail_token_uri: str = defaults.GMAIL_TOKEN_URI
    gmail_timeout: float = defaults.GMAIL_TIMEOUT
    google_client_secrets: str = defaults.GOOGLE_CLIENT_SECRETS
    token_encryption_key: str = defaults.TOKEN_ENCRYPTION_KEY
    smtp_host: str = defaults.SMTP_HOST
    smtp_port: int = defaults.SMTP_PORT
    smtp_security: str = defaults.SMTP_SECURITY
    smtp_username: str = defaults.SMTP_USERNAME
    smtp_password: str = defaults.SMTP_PASSWORD
    smtp_timeout: float = defaults.SMTP_TIMEOUT
    smtp_max_messages_per_connection: int = defaults.SMTP_MAX_MESSAGES_PER_CONNECTION
    smtp_max_connections: int = defaults.SMTP_MAX_CONNECTIONS
    smtp_transient_delay: float = defaults.SMTP_TRANSIENT_DELAY
    gmail_max_concurrent_per_sender: int = defaults.GMAIL_MAX_CONCURRENT_PER_SENDER
    learned_cap_hold: float = defaults.LEARNED_CAP_HOLD
    learned_cap_raise_after: int = defaults.LEARNED_CAP_RAISE_AFTER
    unsubscribe_base_url: str = defaults.UNSUBSCRIBE_BASE_URL
    unsubscribe_token_days: int = defaults.UNSUBSCRIBE_TOKEN_DAYS
    bounce_check_interval: int = defaults.BOUNCE_CHECK_INTERVAL
    send_as_check_interval: int = defaults.SEND_AS_CHECK_INTERVAL
    metadata_max_bytes: int = defaults.METADATA_MAX_BYTES
    feedback_loop_from: str = defaults.FEEDBACK_LOOP_FROM
    mailbox_max_message_bytes: int = defaults.MAILBOX_MAX_MESSAGE_BYTES
    retention_days: int = defaults.RETENTION_DAYS
    job_retention_days: int = defaults.JOB_RETENTION_DAYS
    purge_interval: float = defaults.PURGE_INTERVAL
    purge_batch: int = defaults.PURGE_BATCH
    purge_pause: float = defaults.PURGE_PAUSE
    secret_key: str = defaults.SECRET_KEY
    metrics_port: int = defaults.METRICS_PORT
    metrics_sender_labels: bool = defaults.METRICS_SENDER_LABELS
    development: bool = defaults.DEVELOPMENT
    webhook_timeout: float = defaults.WEBHOOK_TIMEOUT
    webhook_retry_schedule: str = defaults.WEBHOOK_RETRY_SCHEDULE
    webhook_disable_after: float = defaults.WEBHOOK_DISABLE_AFTER
    webhook_allow_private: bool = defaults.WEBHOOK_ALLOW_PRIVATE
    webhook_allow_http: bool = defaults.WEBHOOK_ALLOW_HTTP
    webhook_concurrency: int = defaults.WEBHOOK_CONCURRENCY
    webhook_poll_interval: float = defaults.WEBHOOK_POLL_INTERVAL
    webhook_lease_seconds: int = defaults.WEBHOOK_LEASE_SECONDS
    webhook_rotation_overlap: int = defaults.WEBHOOK_ROTATION_OVERLAP
    attachment_max_bytes: int = defaults.ATTACHMENT_MAX_BYTES
    attachment_inline_max_bytes: int = defaults.ATTACHMENT_INLINE_MAX_BYTES
    attachment_chunk_bytes: int = defaults.ATTACHMENT_CHUNK_BYTES
    attachment_cache_bytes: int = defaults.ATTACHMENT_CACHE_BYTES
    attachment_retention_days: int = defaults.ATTACHMENT_RETENTION_DAYS

    @property
    def runner_stale_after(self) -> float:
        """Seconds without a heartbeat after which a runner counts as dead: 3 x HEARTBEAT_INTERVAL
        (the API's warning and /healthz, the dashboard, `mailjobs runners`)."""
        return 3 * self.heartbeat_interval

    @property
    def looks_up_in_doubt(self) -> bool:
        """In-doubt sends are looked up at Gmail before they are sent again (IN_DOUBT_POLICY
        check, or auto where the token's scope allows it)."""
        return self.in_doubt_policy in ("check", "auto")

    @property
    def reads_mailbox(self) -> bool:
        """The senders' mailboxes are read (in-doubt lookups, bounce checks): the OAuth grant
        needs gmail.readonly."""
        return self.looks_up_in_doubt or self.bounce_check_interval > 0

    @property
    def transport_name(self) -> str:
        """The transport in use: MAIL_TRANSPORT, else gmail when an OAuth client is configured."""
        if self.mail_transport:
            return self.mail_transport
        return "gmail" if self.google_client_secrets else "outbox"

    def __post_init__(self) -> None:
        choices = {"mail_transport": ("", "gmail", "smtp", "outbox", "null"),
                   "in_doubt_policy": ("auto", "check", "resend", "hold"),
                   "smtp_security": ("starttls", "ssl", "none"),
                   "log_format": ("text", "json")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name.upper()} must be one of {', '.join(filter(None, allowed))},"
                                 f" got {getattr(self, name)!r}")
        if self.unsubscribe_base_url and not self.unsubscribe_base_url.startswith(
                ("http://", "https://")):
            raise ValueError("UNSUBSCRIBE_BASE_URL must start with https:// (or http://), got "
                             f"{self.unsubscribe_base_url!r}")
        if self.database_url:
            DatabaseParams.from_url(self.database_url)   # a bad URL is one sentence at start
        for name in ("retention_days", "job_retention_days", "purge_interval", "purge_pause",
                     "attachment_retention_days", "attachment_cache_bytes",
                     "in_doubt_check_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.upper()} must be 0 or more, got {getattr(self, name)}")
        for name in ("attachment_max_bytes", "attachment_chunk_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.upper()} must be 1 or more, got {getattr(self, name)}")
        if self.purge_batch < 1:
            raise ValueError(f"PURGE_BATCH must be 1 or more, got {self.purge_batch}")
        if 0 < self.job_retention_days < self.unsubscribe_token_days:
            raise ValueError(f"JOB_RETENTION_DAYS ({self.job_retention_days}) must be 0 or at least "
                             f"UNSUBSCRIBE_TOKEN_DAYS ({self.unsubscribe_token_days}): an "
                             "unsubscribe link must find its recipient for as long as it works")
        try:
            schedule = [float(x) for x in self.webhook_retry_schedule.split(",") if x.strip()]
        except ValueError:
            schedule = []
        if not schedule or min(schedule) < 0:
            raise ValueError("WEBHOOK_RETRY_SCHEDULE must list seconds separated by commas, got "
                             f"{self.webhook_retry_schedule!r}")
        for address in self.feedback_loop_addresses:   # each becomes a Gmail search term
            if not re.fullmatch(_FEEDBACK_FROM, address):
                raise ValueError("FEEDBACK_LOOP_FROM must list addresses or domains separated "
                                 f"by commas, got {address!r}")

    @property
    def feedback_loop_addresses(self) -> tuple[str, ...]:
        """FEEDBACK_LOOP_FROM split on commas and spaces (checked in __post_init__)."""
        return tuple(a for a in re.split(r"[,\s]+", self.feedback_loop_from) if a)

    @property
    def db(self) -> DatabaseParams:
        if not self.database_url:
            raise RuntimeError("DATABASE_URL is not set and no local database was started")
        return DatabaseParams.from_url(self.database_url)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def load_settings(dotenv: bool = True) -> Settings:
    """Read the environment (after `.env` in the project root, which never overrides it)."""
    if dotenv:
        from dotenv import load_dotenv

        load_dotenv(PROJECT_ROOT / ".env", override=False)
    values: dict[str, Any] = {"database_url": _env("DATABASE_URL", None),
                              "log_level": _env("LOG_LEVEL", "INFO")}
    for item in fields(Settings):
        if item.name not in values:
            values[item.name] = _env(item.name.upper(), getattr(defaults, item.name.upper()))
    return Settings(**values)
