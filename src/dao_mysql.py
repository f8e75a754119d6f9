"""All SQL access of mailjobs: one `Dao` method per operation (the store, procrastinate's
manager layer over its connector).

- The connection pool, deadlines, the circuit breaker, error translation, transactions and
  statements by name are the connector's (`db/connector.py`); its error types are importable
  from here too (`DatabaseUnavailable`, `DuplicateKey`, ...), as every caller knows them.
- Statements live in `queries.sql`, loaded by name; a method runs them through the connector and
  maps their rows BY COLUMN NAME into the `records` dataclasses (a SELECT names its columns as
  the dataclass's fields; the mapping takes what it selects).
- What is decided rather than stored lives in small domain modules this one calls: the
  sender's limits at a claim (`rate_limit`), a job control action's outcome (`job_control`),
  what a read bounce does (`deliverability.bounce_rules`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pymysql
import pymysql.converters
from pymysql.constants import SERVER_STATUS
from pymysql.cursors import Cursor

from mailjobs import defaults, job_status
from mailjobs.db.connector import (
    QUERIES_FILE,
    Args,
    Connector,
    DaoError,
    DatabaseUnavailable,
    DuplicateKey,
    Row,
    TransactionConflict,
    fetch_all,
    fetch_one,
    fetch_value,
    load_queries,
    rerun_on_conflict,
    rerun_on_conflict_as,
    translate,
)
from mailjobs.deliverability import bounce_rules
from mailjobs.deliverability.bounce_rules import BounceTarget, attributed
from mailjobs.job_control import Decide, JobState
from mailjobs.mail_message import recipient_message_id
from mailjobs.rate_limit import (
    DEFERRED,
    Limits,
    SenderState,
    allowance,
    claim_limits,
    tokens_after_claim,
)
from mailjobs.records import (
    ERROR_TEXT_MAX,
    ApiKey,
    Attachment,
    FinalOutcome,
    GiveBack,
    Job,
    LearnedCap,
    NewJob,
    NewRecipient,
    Recipient,
    RetryOutcome,
    SenderPlan,
    SentOutcome,
    StoredTemplate,
    Suppression,
    clip_error,
)
from mailjobs.scheduling import Claimable
from mailjobs.settings import DatabaseParams, Settings
from mailjobs.states import RecipientStatus

__all__ = ["QUERIES_FILE", "AttachmentGone", "Dao", "DaoError", "DatabaseUnavailable",
           "DuplicateKey", "RecipientRow", "TransactionConflict", "attributed", "insert_values",
           "load_queries"]

log = logging.getLogger("mailjobs.db")
R = TypeVar("R")
# One recipient as stored (insert_recipients' columns after job_id): address, name, variables as
# JSON text, locale asked for, template variant used, metadata as JSON text (each but the
# address may be None).
# A recipient as stored (insert_recipients after job_id): to_email, name, variables (JSON),
# locale, locale_used, metadata (JSON), attachments (JSON)
RecipientRow = tuple[str, str | None, str | None, str | None, str | None, str | None, str | None]

# The job being stored, in the storing transaction's packet of statements (Dao._store): the
# session variable's name in SQL text, and the marker that stands for it among a statement's
# values (Dao._render; an object, so no value a client sends can be taken for it).
JOB_ID = "@job_id"
JOB = object()


@dataclasses.dataclass(frozen=True)
class Also:
    """What the transaction storing a job reads besides (no round trip of its own): the
    sender's plan for the estimate (Dao.sender_plan, the job itself excluded), the runners
    live within `live_runners_age` seconds (None: not read)."""
    plan: bool = False
    live_runners_age: float | None = None


@dataclasses.dataclass(frozen=True)
class StoredJob:
    """A job as its storing transaction read it back: the job, its suppressed recipients, and
    what Also asked (None where not asked)."""
    job: Job
    suppressed: int
    plan: SenderPlan | None = None
    live_runners: int | None = None


# Ids per `WHERE id IN (...)` statement of a purge batch: under MariaDB's
# in_predicate_conversion_threshold (1,000), so the list stays a primary-key range.
PK_CHUNK = 500


class AttachmentGone(DaoError):
    """An attachment a job names was deleted while the job was being stored."""


_rerun_on_conflict = rerun_on_conflict
_translate = translate


class Dao:
    """All SQL access: one method per operation, over the connector (one per process, shared
    by its threads); rows are mapped by column name into the records dataclasses."""

    def __init__(self, settings: Settings, params: DatabaseParams | None = None) -> None:
        self.db = Connector(settings, params)
        self.settings = settings
        self.params = self.db.params
        self.queries = self.db.queries
        self.breaker = self.db.breaker
        self._known_senders: set[str] = set()
        self._max_packet: int | None = None

    # --- connections ----------------------------------------------------------------------
    @property
    def connections_in_use(self) -> int:
        return self.db.connections_in_use

    def transaction(self) -> AbstractContextManager[Cursor]:
        """A cursor in one transaction: committed on success, rolled back on error."""
        return self.db.transaction()

    def _run(self, cur: Cursor, name: str, args: Args = None, **parts: str) -> int:
        """A named statement in the caller's transaction (Connector.run)."""
        return self.db.run(cur, name, args, **parts)

    def _one(self, name: str, args: Args = None) -> Row | None:
        return self.db.one(name, args)

    def _all(self, name: str, args: Args = None) -> list[Row]:
        return self.db.all(name, args)

    def ping(self) -> None:
        self._one("ping")

    def max_packet_bytes(self) -> int:
        """The server's max_allowed_packet: no one statement may be larger (read once)."""
        if self._max_packet is None:
            value = self.db.value("max_allowed_packet")
            self._max_packet = int(value) if value is not None else 16 * 1024 * 1024
        return self._max_packet

    def health(self, timeout: float, max_age: float) -> tuple[str, int | None, str]:
        """(database, live runners, detail) for /healthz, within `timeout` seconds whatever the
        server does (Connector.health)."""
        return self.db.health(timeout, max_age)

    def close(self) -> None:
        self.db.close()

    # --- API keys -------------------------------------------------------------------------
    def insert_api_key(self, name: str, prefix: str, secret_hash: str,
                       allowed_senders: Sequence[str], is_operator: bool,
                       max_priority: int = 2, test_mode: str | None = None) -> int:
        with self.transaction() as cur:
            self._run(cur, "insert_api_key",
                      (name, prefix, secret_hash, json.dumps(list(allowed_senders)), is_operator,
                       max_priority, test_mode))
            return int(cur.lastrowid)

    def api_key_by_prefix(self, prefix: str) -> ApiKey | None:
        # the read and its COMMIT in one packet: one round trip (a far database pays each)
        with self.transaction() as cur:
            row = self._script(cur, [self._render(cur, "api_key_by_prefix", (prefix,))],
                               commit=True)[0][1]
        return _api_key(row[0]) if row else None

    def api_keys(self) -> list[ApiKey]:
        return [_api_key(row) for row in self._all("api_keys_all")]

    def touch_api_key(self, key_id: int) -> None:
        with self.transaction() as cur:
            self._script(cur, [self._render(cur, "touch_api_key", (key_id,))], commit=True)

    def revoke_api_key(self, id_or_prefix: str) -> bool:
        with self.transaction() as cur:
            return self._run(cur, "revoke_api_key", (id_or_prefix, id_or_prefix)) > 0

    # --- jobs -----------------------------------------------------------------------------
    def create_job(self, job: NewJob, recipients: Sequence[NewRecipient]) -> int:
        """Store a job and all its recipients in one transaction; returns the job id.

        Raises DuplicateKey when the (api key, idempotency key) pair exists already.
        """
        return self.create_job_read(job, recipients).job.id

    @_rerun_on_conflict
    def create_job_read(self, job: NewJob, recipients: Sequence[NewRecipient | RecipientRow],
                        check_sender: Callable[[list[tuple[Any, ...]]], None] | None = None,
                        also: Also | None = None) -> StoredJob:
        """create_job, returning the stored job and how many of its recipients were
        suppressed, both read in its transaction (no round trips after the commit).
        `check_sender` gets the sender's send-as rows (send_as_for), read in the same
        transaction, and may raise to store nothing. `also`: what else to read in it (the
        estimate's sender plan, the live runners). The statements go in one packet (one round
        trip where max_allowed_packet allows), then the COMMIT: bench/README.md."""
        rows = [r if isinstance(r, tuple) else _recipient_row(r) for r in recipients]
        with self.transaction() as cur:
            return self._store(cur, job, rows, check_sender, None, also)

    def create_job_chunks(self, job: NewJob, chunks: Iterator[Sequence[RecipientRow]],
                          totals: Callable[[], tuple[int, int]],
                          check_sender: Callable[[list[tuple[Any, ...]]], None] | None = None,
                          also: Also | None = None) -> StoredJob:
        """create_job_read for a job whose recipients come a chunk at a time (each stored as
        it comes, all in one transaction: an exception from `chunks` rolls it all back);
        totals() gives (recipients, duplicates removed) once `chunks` is exhausted. Not rerun
        on a lock conflict: the chunks cannot be read twice (only new rows are written). Round
        trips: the first chunk goes with the job's row, one per further chunk, the totals
        with the read back, the COMMIT."""
        with self.transaction() as cur:
            return self._store(cur, job, next(chunks, []), check_sender, (chunks, totals), also)

    def _store(self, cur: Any, job: NewJob, first: Sequence[RecipientRow],
               check_sender: Callable[[list[tuple[Any, ...]]], None] | None,
               rest: tuple[Iterator[Sequence[RecipientRow]], Callable[[], tuple[int, int]]] | None,
               also: Also | None) -> StoredJob:
        """The storing transaction's statements (the job's id in the session variable @job_id),
        as few packets as max_allowed_packet allows: [the send-as read], the job, its first
        recipients; [each further chunk; the totals]; the suppressed, the job read back, what
        `also` asks."""
        head = [self._render(cur, "send_as_for", (job.sender_email.lower(),) * 5)] \
            if check_sender is not None else []
        head += self._job_statements(cur, job)
        sent: list[tuple[int, list[Row]]] = []
        if job.attachment_ids:   # checked and locked before the recipients (AttachmentGone)
            sent = self._script(cur, [*head, f"SELECT {JOB_ID} AS job_id"])
            self._use_attachments(cur, int(sent[-1][1][0]["job_id"]), job.attachment_ids,
                                  job.attachments)
            head = []
        head += self._recipient_statements(cur, first)
        tail: list[str] = []
        if rest is None:
            total = len(first)
        else:   # the job and its first chunk now, then a statement a chunk
            sent += self._script(cur, head)
            head = []
            if check_sender is not None:
                check_sender(_send_as_rows(sent[0][1]))
                check_sender = None
            chunks, totals = rest
            for chunk in chunks:
                self._script(cur, self._recipient_statements(cur, chunk))
            total, duplicates = totals()
            tail.append(self._render(cur, "set_job_totals", (total, duplicates, JOB)))
        tail += [self._render(cur, "suppress_new_recipients", (job.api_key_id, JOB)),
                 self._render(cur, "job_by_id", (JOB,))]
        if also is not None and also.plan:
            tail.append(self._render(cur, "sender_plan",
                                     {"sender": job.sender_email, "exclude": JOB}))
        if also is not None and also.live_runners_age is not None:
            tail.append(self._render(cur, "live_runners",
                                     (int(also.live_runners_age * 1_000_000),)))
        results = self._script(cur, head + tail)
        if check_sender is not None:
            check_sender(_send_as_rows((sent or results)[0][1]))
        read = iter(results[len(results) - len(tail) + (rest is not None):])
        suppressed = next(read)[0]
        job_row = next(read)[1][0]
        plan = live = None
        if also is not None and also.plan:
            plan = _plan(next(read)[1][0])
        if also is not None and also.live_runners_age is not None:
            live = len(next(read)[1])
        if suppressed:
            job_id = int(job_row["id"])
            self._after_suppressed(cur, job_id, suppressed, total)
            if suppressed == total:   # completed at once: read again
                self._run(cur, "job_by_id", (job_id,))
                job_row = _found(fetch_one(cur))
        return StoredJob(_job(job_row), suppressed, plan, live)

    def _job_statements(self, cur: Any, job: NewJob) -> list[str]:
        """The job's row, its id in @job_id, the columns set when given."""
        out = [self._render(cur, "insert_job", (
            job.api_key_id, job.sender_email, job.from_name, job.reply_to,
            job.subject_template, job.html_template, job.text_template,
            json.dumps(job.variables),
            "scheduled" if job.send_at is not None else "queued", job.total,
            job.duplicates_removed, job.idempotency_key, job.request_hash,
            _naive_utc(job.send_at), job.priority, _naive_utc(job.expires_at))),
            f"SET {JOB_ID} = LAST_INSERT_ID()"]
        if job.template_name is not None:
            out.append(self._render(cur, "set_job_template",
                                    (job.template_name, job.template_version, JOB)))
        if job.unsubscribe_base_url:
            out.append(self._render(cur, "set_job_unsubscribe",
                                    (job.unsubscribe_base_url, JOB)))
        if job.metadata is not None:
            out.append(self._render(cur, "set_job_metadata", (json.dumps(job.metadata), JOB)))
        if job.template_variants:
            out.append(self._render(cur, "set_job_variants",
                                    (json.dumps(job.template_variants), JOB)))
        return out

    def _recipient_statements(self, cur: Any, rows: Sequence[RecipientRow]) -> list[str]:
        # The statement's text is built here rather than by executemany: pymysql escapes each
        # value through four layers of calls, ~40 µs a recipient (4 s of CPU for a 100,000-
        # recipient job, more than the database takes to store it); insert_values escapes a
        # chunk's values in a few passes over one string (~1 µs a recipient). bench/README.md.
        head = self.queries["insert_recipients"].rpartition("VALUES")[0] + "VALUES "
        no_backslash = bool(cur.connection.server_status
                            & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES)
        limit = self.max_packet_bytes() // 2
        return [head + values
                for start in range(0, len(rows), defaults.INSERT_BATCH)
                for values in insert_values(JOB_ID, rows[start:start + defaults.INSERT_BATCH],
                                            no_backslash, limit)]

    def _after_suppressed(self, cur: Any, job_id: int, n: int, total: int) -> None:
        """After suppress_new_recipients marked `n` of the job's `total` recipients: their
        events; when that is all of them, the job is `completed` at once."""
        self._job_recipient_events(cur, "recipient.suppressed", job_id, ("suppressed",))
        if n == total:
            if self._run(cur, "complete_suppressed_job",
                         (f"nothing to send: all {n} recipient(s) are on the suppression list",
                          job_id)):
                self._job_events(cur, "job.completed", [job_id], {"suppressed": n})

    def _render(self, cur: Any, name: str, args: tuple[Any, ...] | dict[str, Any]) -> str:
        """A named statement with its values in, escaped by the connection (as execute() does);
        JOB stands for the session variable of the job being stored."""
        literal = cur.connection.escape

        def lit(value: Any) -> Any:
            return JOB_ID if value is JOB else literal(value)
        if isinstance(args, dict):
            return self.queries[name] % {k: lit(v) for k, v in args.items()}
        return self.queries[name] % tuple(lit(v) for v in args)

    def _script(self, cur: Any, statements: Sequence[str],
                commit: bool = False) -> list[tuple[int, list[Row]]]:
        """Statements (their values in) sent several to a packet (CLIENT.MULTI_STATEMENTS), as
        few packets as max_allowed_packet allows: a far database pays a round trip a packet,
        not a statement. (rows affected or read, rows read) of each. The server stops at the
        first failing statement (its error is raised here; the transaction is rolled back by
        the caller). commit: a COMMIT ends the last packet, and the transaction's own commit
        then costs no round trip."""
        room = self.max_packet_bytes() - 64 * 1024
        packets: list[list[str]] = []
        size = room
        for text in [*statements, "COMMIT"] if commit else statements:
            n = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            if size + n + 3 > room:
                packets.append([])
                size = 0
            packets[-1].append(text)
            size += n + 3
        out: list[tuple[int, list[Row]]] = []
        for packet in packets:
            cur.execute("\n;\n".join(packet))
            while True:
                out.append((cur.rowcount, fetch_all(cur) if cur.description else []))
                if not cur.nextset():
                    break
        if commit:
            cur.connection.ended_by_commit()
        return out

    def job(self, job_id: int, with_counts: bool = False) -> Job | None:
        row = self._one("job_by_id", (job_id,))
        if row is None:
            return None
        return _job(row, self.recipient_counts(job_id) if with_counts else {})

    def job_by_idempotency_key(self, api_key_id: int, key: str) -> Job | None:
        row = self._one("job_by_idempotency_key", (api_key_id, key))
        return _job(row) if row else None

    def jobs_page(self, api_key_id: int | None, before: int | None, limit: int,
                  status: str | None = None) -> list[Job]:
        rows = self._all("jobs_page", {"api_key_id": api_key_id, "status": status,
                                       "before": before or 2**63, "limit": limit})
        return [_job(row) for row in rows]

    def recipient_counts(self, job_id: int) -> dict[str, int]:
        return _counts(self._all("recipient_counts", (job_id,)))

    def recipients_page(self, job_id: int, status: str | None, after: int,
                        limit: int) -> list[Recipient]:
        args = {"job_id": job_id, "status": status, "after": after, "limit": limit}
        name = "recipients_page_by_status" if status else "recipients_page"
        return [_recipient(row) for row in self._all(name, args)]

    def export_recipients_page(self, job_id: int, after: int, limit: int) -> list[tuple[Any, ...]]:
        """One page of the CSV export (export.py): (id, to_email, name, status, attempts,
        error_code, error, sent_at, gmail_message_id, locale, locale_used) rows with id >
        `after`, in id order (the statement's columns, in its order)."""
        rows = self._all("export_recipients_page",
                         {"job_id": job_id, "after": after, "limit": limit})
        return [tuple(_utc(row).values()) for row in rows]

    def sender_plan(self, sender: str, exclude_job: int = 0
                    ) -> SenderPlan:
        """For estimates.py: the sender's own rate and daily cap (None where the settings
        apply), the unsent recipients of its active jobs (all but `exclude_job`), and its sends
        in the last 24 hours."""
        return _plan(_found(self._one("sender_plan", {"sender": sender, "exclude": exclude_job})))

    def save_delegated_key(self, pattern: str, client_email: str, blob: bytes) -> int:
        """Store a service-account key for an address or '*@domain' (encrypted), authorise its
        senders again and resume their jobs paused for authorisation; returns jobs resumed."""
        domain = pattern[2:] if pattern.startswith("*@") else None
        args = {"email": pattern, "domain": domain}
        with self.transaction() as cur:
            self._run(cur, "save_delegated_key", (pattern, client_email, blob))
            self._run(cur, "reauthorize_senders", args)
            return self._run(cur, "resume_jobs_of_senders", args)

    def delegated_key(self, sender: str) -> tuple[str, bytes] | None:
        """(pattern, encrypted key) a sender sends with: its address's, else its domain's."""
        row = self._one("delegated_key", {"email": sender})
        return (row["pattern"], bytes(row["credentials"])) if row else None

    # --- stored templates -----------------------------------------------------------------
    def add_template_version(self, api_key_id: int, name: str, subject: str, html: str | None,
                             text: str | None, must_exist: bool,
                             variants: dict[str, dict[str, Any]] | None = None
                             ) -> StoredTemplate | None:
        """Store the next version of a template (1 for a new one), with its variants by
        language tag.

        must_exist=False refuses (returns None) when the name exists; True refuses when not.
        """
        with self.transaction() as cur:
            self._run(cur, "template_latest_version", (api_key_id, name))
            latest = int(fetch_value(cur))
            if (latest > 0) != must_exist:
                return None
            self._run(cur, "insert_template", (api_key_id, name, latest + 1, subject, html, text,
                                               json.dumps(variants) if variants else None))
            self._run(cur, "template_version", (api_key_id, name, latest + 1))
            return _template(_found(fetch_one(cur)))

    def template(self, api_key_id: int, name: str, version: int | None) -> StoredTemplate | None:
        row = (self._one("template_version", (api_key_id, name, version)) if version is not None
               else self._one("template_newest", (api_key_id, name)))
        return _template(row) if row else None

    def template_versions(self, api_key_id: int, name: str) -> list[StoredTemplate]:
        return [_template(r) for r in self._all("template_versions", (api_key_id, name))]

    def templates(self, api_key_id: int) -> list[StoredTemplate]:
        return [_template(r) for r in self._all("templates_of_key", (api_key_id, api_key_id))]

    # --- metrics --------------------------------------------------------------------------
    def queue_metrics(self) -> tuple[dict[str, int], float, list[dict[str, Any]],
                                     list[LearnedCap]]:
        """Queue depth by status, oldest due queued age (s), live runners' heartbeat ages, the
        learned caps."""
        with self.transaction() as cur:
            self._run(cur, "queue_depth")
            depth = _counts(fetch_all(cur))
            self._run(cur, "oldest_queued_age")
            oldest = float(fetch_value(cur) or 0)
            self._run(cur, "runner_heartbeat_ages")
            runners = [{**r, "age": float(r["age"])} for r in fetch_all(cur)]
            self._run(cur, "learned_caps_all")
            caps = [_learned_cap(r) for r in fetch_all(cur)]
        return depth, oldest, runners, caps

    # --- runners --------------------------------------------------------------------------
    def runner_heartbeat(self, runner: dict[str, Any]) -> None:
        with self.transaction() as cur:
            self._run(cur, "runner_heartbeat", runner)

    def live_runners(self, max_age: float) -> list[dict[str, Any]]:
        rows = self._all("live_runners", (int(max_age * 1_000_000),))
        return [_runner(row) for row in rows]

    def runners(self, limit: int = 100) -> list[dict[str, Any]]:
        return [_runner(row) for row in self._all("all_runners", (limit,))]

    def recipients_by_email(self, email: str, api_key_id: int | None, before: int | None,
                            limit: int) -> list[tuple[Recipient, str, str, int]]:
        """An address's recipient rows across jobs, newest first, with each job's status,
        sender and key: one key's jobs, or (None) every key's. Keyset paged by `before`."""
        rows = self._all("recipients_by_email", {
            "email": email, "api_key_id": api_key_id, "limit": limit,
            "before": before if before is not None else 2**63 - 1})
        # the recipient's attachments: the job's (every recipient gets them), then its own
        return [(dataclasses.replace(_recipient(row), attachments=(
                    (_json(row["job_attachments"]) or []) + (_json(row["attachments"]) or []))),
                 row["job_status"], row["sender_email"], int(row["api_key_id"])) for row in rows]

    # --- claiming -------------------------------------------------------------------------
    def claimable_jobs(self, limit: int) -> list[Claimable]:
        return [Claimable(int(r["id"]), r["sender_email"], int(r["priority"]),
                          int(r["api_key_id"])) for r in self._all("claimable_jobs", (limit,))]

    @_rerun_on_conflict
    def expire_due_jobs(self, limit: int = 20) -> list[int]:
        """Recipients of jobs past expires_at that were not sent end 'expired'; returns the
        jobs touched (the caller finishes them)."""
        job_ids = [int(r["id"]) for r in self._all("expired_jobs", (limit,))]
        for job_id in job_ids:
            with self.transaction() as cur:
                self._run(cur, "expiring_recipients", (job_id,))
                ids = [int(r["id"]) for r in fetch_all(cur)]
                self._run(cur, "expire_recipients",
                          ("not sent before the job's expires_at; never sent late", job_id))
                self._recipient_events(cur, "recipient.failed", ids, ("expired",))
                self._run(cur, "start_expired_job", (job_id,))
        return job_ids

    def claim(self, job_id: int, sender: str, runner_id: str, wanted: int, lease: int,
              limits: Limits) -> tuple[list[Recipient], str | None]:
        rows, reason, _ = self.claim_checked(job_id, sender, runner_id, wanted, lease, limits)
        return rows, reason

    @rerun_on_conflict_as("claim")
    def claim_checked(self, job_id: int, sender: str, runner_id: str, wanted: int, lease: int,
                      limits: Limits, api_key_id: int | None = None, unlimited: bool = False
                      ) -> tuple[list[Recipient], str | None, dict[int, str]]:
        """Claim up to `wanted` due recipients of one job within the sender's limits.

        One transaction: lock the sender row, take what the limits allow (due retries, then
        expired leases, then queued, each FOR UPDATE SKIP LOCKED, in one round trip), mark them
        `sending` under a lease with their Message-ID fixed, charge the sender, commit. Returns
        the rows and, when limits allowed fewer than wanted, why; and, with `api_key_id`, those
        of them whose address that key suppressed since the job was stored ({id: reason}), read
        with the claimed rows (claimed_rows). Every statement's cost grows with the rows, not
        with their square (a far database's runner claims thousands at once: issue 12).
        `unlimited` (a test key's job): no sender limit nor deferral holds it, nothing is
        charged to the sender.
        """
        self._ensure_sender(sender)
        with self.transaction() as cur:
            self._run(cur, "lock_sender", (sender,))
            row = fetch_one(cur)
            if row is None:  # deleted since this process created it
                self._known_senders.discard(sender)
                raise TransactionConflict(f"sender row {sender} missing; creating it again")
            state = SenderState(row["rate_per_minute"], row["daily_cap"], float(row["tokens"]),
                                None if row["elapsed"] is None else float(row["elapsed"]),
                                bool(row["deferred"]))
            own = claim_limits(limits, state, unlimited)
            if own is None:
                return [], DEFERRED, {}
            sent_24h = 0
            if own.daily_cap > 0:
                self._run(cur, "sender_sends_24h", (sender,))
                sent_24h = int(fetch_value(cur))
            allowed = allowance(own, wanted, state.tokens, state.elapsed, sent_24h)
            ids: list[int] = []
            expired: list[int] = []
            if allowed.count > 0:
                self._run(cur, "due_claimable",
                          {"job": job_id, "n": allowed.count, "runner": runner_id})
                due = sorted(((int(r["kind"]), int(r["id"])) for r in fetch_all(cur)),
                             key=lambda due: due[0])   # stable: each part keeps its order
                ids = [i for _, i in due[:allowed.count]]
                expired = [i for kind, i in due[:allowed.count] if kind == 1]
            if not ids:
                if own.rate_per_minute > 0:
                    self._run(cur, "set_sender_tokens", (tokens_after_claim(allowed, 0), sender))
                return [], allowed.reason, {}
            if expired:  # their runner died mid-send: the mail may have gone out
                self._run(cur, "mark_in_doubt", expired, ids=_placeholders(len(expired)))
            new_ids = json.dumps([(i, recipient_message_id(job_id, i, sender)) for i in ids])
            self._run(cur, "claim_recipients", (new_ids, runner_id, lease, lease))
            self._run(cur, "start_job", (job_id,))
            # api_key_id None (Dao.claim): no suppression read (no key matches id 0)
            self._run(cur, "claimed_rows",
                      (api_key_id if api_key_id is not None else 0, *ids, runner_id),
                      ids=_placeholders(len(ids)))
            found = fetch_all(cur)
            # charged for what was taken (a row claimed elsewhere since it was found is not)
            if own.rate_per_minute > 0:
                self._run(cur, "set_sender_tokens",
                          (tokens_after_claim(allowed, len(found)), sender))
            if own.daily_cap > 0 and found:
                self._add_sender_sends(cur, {sender: len(found)})
            rows = [_recipient(row) for row in found]
            suppressed = {int(row["id"]): row["suppressed_reason"] for row in found
                          if row["suppressed_reason"] is not None and api_key_id is not None}
            return rows, allowed.reason, suppressed

    def _add_sender_sends(self, cur: Any, sends: dict[str, int]) -> None:
        """Reserve (positive) or give back (negative) sends in each sender's hourly bucket."""
        for sender, n in sends.items():
            if n:
                self._run(cur, "add_sender_sends", (sender, n, n))

    @_rerun_on_conflict
    def renew_leases(self, runner_id: str, ids: Sequence[int], lease: int) -> set[int]:
        """Renew these claims' leases; returns the ids still this runner's. One that is not was
        taken over by another runner while this one could not renew it (its lease ran out):
        it must not be sent from here any more."""
        if not ids:
            return set()
        marks = _placeholders(len(ids))
        with self.transaction() as cur:
            renewed = self._run(cur, "renew_leases", (lease, lease, runner_id, *ids), ids=marks)
            if renewed == len(ids):   # the usual case: no second round trip
                return set(ids)
            self._run(cur, "held_claims", (runner_id, *ids), ids=marks)
            return {int(row["id"]) for row in fetch_all(cur)}

    def claims_of(self, runner_id: str, job_id: int) -> list[int]:
        """Ids of the job's recipients `sending` under this runner's name."""
        return [int(row["id"]) for row in self._all("claims_of", (job_id, runner_id))]

    @_rerun_on_conflict
    def release(self, runner_id: str, back: GiveBack) -> int:
        """Give unsent claims back (attempt refunded, daily reservation refunded); those of
        cancelled jobs (`back.cancelled`) become `cancelled`."""
        ids, cancelled = back.released, back.cancelled
        if not ids and not cancelled:
            return 0
        n = 0
        with self.transaction() as cur:
            if ids:
                n += cur.execute(
                    self.queries["release_claims"].format(ids=_placeholders(len(ids))),
                    (int(back.delay * 1_000_000), runner_id, *ids))
            if cancelled:
                n += cur.execute(
                    self.queries["cancel_claims"].format(ids=_placeholders(len(cancelled))),
                    (runner_id, *cancelled))
            self._add_sender_sends(cur, {s: -count for s, count in back.refunds.items()})
            return n

    # --- outcomes -------------------------------------------------------------------------
    @_rerun_on_conflict
    def record_outcomes(self, runner_id: str, sent: Sequence[SentOutcome],
                        failed: Sequence[FinalOutcome], retry: Sequence[RetryOutcome],
                        sender_refunds: Mapping[str, int] | None = None) -> None:
        """Write a batch of outcomes in one transaction: one UPDATE for all sent rows.

        sender_refunds: {sender: sends} charged at claim that did not go out.
        """
        with self.transaction() as cur:
            if sent:
                self._run(cur, "record_sent", (json.dumps([(o.id, o.provider_id) for o in sent]),
                                               runner_id))
            if failed:
                cur.executemany(self.queries["record_failed"], [
                    (o.status.value, o.error_code, clip_error(o.error),
                     1 if o.status == RecipientStatus.IN_DOUBT else 0, 1 if o.refund else 0,
                     o.id, runner_id)
                    for o in failed])
            for chunk in _retry_chunks(retry):
                columns: list[list[tuple[int, Any]]] = [[(o.id, o.error_code) for o in chunk],
                           [(o.id, clip_error(o.error)) for o in chunk],
                           [(o.id, int(o.delay * 1_000_000)) for o in chunk],
                           [(o.id, 1 if o.refund else 0) for o in chunk],
                           [(o.id, 1 if o.in_doubt else 0) for o in chunk],
                           [(o.id, int(o.deferral)) for o in chunk]]
                sql = self.queries["record_retry"].format(
                    case=" ".join(["WHEN %s THEN %s"] * len(chunk)),
                    ids=_placeholders(len(chunk)))
                args = [v for column in columns for pair in column for v in pair]
                cur.execute(sql, (*args, runner_id, *[o.id for o in chunk]))
            self._add_sender_sends(cur, {s: -count for s, count in (sender_refunds or {}).items()})
            final: dict[str, list[int]] = {"recipient.sent": [o.id for o in sent]}
            for o in failed:
                kind = _RECIPIENT_EVENT_OF.get(o.status)
                if kind is not None:
                    final.setdefault(kind, []).append(o.id)
            for kind, ids in final.items():
                self._recipient_events(cur, kind, ids, _EVENT_STATUSES[kind])

    @_rerun_on_conflict
    def finish_job_if_done(self, job_id: int) -> Job | None:
        """When no recipient is left to send, set the job's final status; returns the job then."""
        with self.transaction() as cur:
            self._run(cur, "unfinished_count", (job_id,))
            if int(fetch_value(cur)) > 0:
                return None
            self._run(cur, "recipient_counts", (job_id,))
            counts = _counts(fetch_all(cur))
            status, reason = job_status.final_status(counts)
            if self._run(cur, "finish_job", (status.value, reason, job_id)) == 0:
                return None
            self._job_events(cur, "job.completed", [job_id], counts)
            self._run(cur, "job_by_id", (job_id,))   # as finished, in this round trip's company
            row = _found(fetch_one(cur))
        return _job(row, counts)

    def job_statuses(self, job_ids: Sequence[int]) -> dict[int, str]:
        if not job_ids:
            return {}
        rows = self.db.all("job_statuses", list(job_ids), ids=_placeholders(len(job_ids)))
        return {int(r["id"]): r["status"] for r in rows}

    def error_summary(self, job_id: int) -> list[tuple[str, int, str]]:
        return [(r["error_code"], int(r["n"]), r["example"])
                for r in self._all("error_summary", (job_id,))]

    # --- job control ----------------------------------------------------------------------
    @_rerun_on_conflict
    def control_job(self, job_id: int, action: str, decide: Decide,
                    statuses: Sequence[str] = (), codes: Sequence[str] = ()) -> int:
        """Run one control action (job_control.ACTIONS) in a transaction with the job row
        locked: `decide(JobState)` returns the job's `Decision` or raises (job_control's
        decide_* functions). For "retry" the recipients matching `statuses` (and `codes`) are
        re-queued first, and the state carries their number (`matched`) and when retention
        erased the recipients' variables (`erased_at`); for "cancel" the unsent recipients are
        cancelled after the decision. Returns the recipients changed.
        """
        with self.transaction() as cur:
            self._run(cur, "lock_job", (job_id,))
            row = fetch_one(cur)
            if row is None:
                raise KeyError(job_id)
            state = JobState(row["status"], bool(row["started"]), bool(row["future_send_at"]),
                             row["paused_by"], row["sender_email"])
            changed = 0
            if action == "retry":
                changed = self._run(cur, "retry_recipients", (job_id, *statuses, *codes),
                                    statuses=_placeholders(len(statuses)),
                                    code_filter=f"AND error_code IN ({_placeholders(len(codes))})"
                                    if codes else "")
                self._run(cur, "job_variables_erased_at", (job_id,))
                # retention erased what a resend needs
                erased_at = _aware(fetch_value(cur))
                state = dataclasses.replace(state, matched=changed, erased_at=erased_at)
            new = decide(state)
            if action == "cancel":
                changed = self._run(cur, "cancel_recipients", (job_id,))
            self._run(cur, "set_job_status",
                      (new.status, new.paused_by, new.reason, new.finished, job_id))
            if new.status == "paused" and state.status != "paused":
                self._job_events(cur, "job.paused", [job_id])
            if new.finished:
                self._run(cur, "recipient_counts", (job_id,))
                self._job_events(cur, "job.completed", [job_id], _counts(fetch_all(cur)))
            return changed

    # --- senders --------------------------------------------------------------------------
    def _ensure_sender(self, sender: str, cached: bool = True) -> None:
        """Create the sender's row, in a transaction of its own (once per process if cached).

        Not inside the transaction that then locks the row: two runners' INSERT IGNOREs of the
        same new row each take a shared lock on it, and each one's FOR UPDATE then waits for the
        other's: a deadlock on every first claim of a new sender.
        """
        if cached and sender in self._known_senders:
            return
        with self.transaction() as cur:
            self._run(cur, "ensure_sender", (sender,))
        self._known_senders.add(sender)

    @_rerun_on_conflict
    def defer_sender(self, sender: str, seconds: float, reason: str) -> None:
        self._ensure_sender(sender, cached=False)
        with self.transaction() as cur:
            self._run(cur, "defer_sender", (int(seconds * 1_000_000), reason[:1000], sender))

    @_rerun_on_conflict
    def pause_sender(self, sender: str, auth_state: str, reason: str, paused_by: str,
                     failed_at: datetime | None = None) -> int | None:
        """Mark the sender broken and pause its queued/running jobs; returns jobs paused.

        A failure of a send that began (`failed_at`) before the sender's credentials were last
        stored is stale (it used the old grant): nothing changes and None is returned.
        """
        self._ensure_sender(sender, cached=False)
        with self.transaction() as cur:
            if failed_at is not None:
                self._run(cur, "sender_credentials_at", (sender,))
                stored = fetch_value(cur)
                if stored is not None and stored >= failed_at.astimezone(
                        UTC).replace(tzinfo=None):
                    return None
            self._run(cur, "sender_auth_failed", (auth_state, reason, sender))
            self._run(cur, "active_sender_jobs", (sender,))
            jobs = [int(r["id"]) for r in fetch_all(cur)]
            n = self._run(cur, "pause_sender_jobs", (paused_by, reason[:1000], sender))
            self._job_events(cur, "job.paused", jobs)
            return n

    def save_sender_credentials(self, sender: str, blob: bytes, resume: bool = False) -> int:
        """Store (encrypted) credentials; with resume, un-pause jobs paused for auth."""
        with self.transaction() as cur:
            if resume:
                self._run(cur, "save_sender_credentials", (sender, blob))
                return self._run(cur, "resume_sender_jobs", (sender,))
            self._run(cur, "update_sender_credentials", (blob, sender))
            return 0

    def sender_credentials(self, sender: str) -> bytes | None:
        blob = self.db.value("sender_credentials", (sender,))
        return bytes(blob) if blob is not None else None

    def senders(self) -> list[dict[str, Any]]:
        """email, rate_per_minute, daily_cap, auth_state, auth_error, paused_until,
        paused_reason, has_credentials (queries.sql senders_all)."""
        return [_utc(row) for row in self._all("senders_all")]

    def sender_sends_24h(self, sender: str) -> int:
        return int(self.db.value("sender_sends_24h", (sender,)) or 0)

    def set_sender_limits(self, sender: str, rate: int | None, cap: int | None) -> None:
        with self.transaction() as cur:
            self._run(cur, "set_sender_limits", (sender, rate, cap))

    # --- dashboard ------------------------------------------------------------------------
    def api_key_by_id(self, key_id: int) -> ApiKey | None:
        row = self._one("api_key_by_id", (key_id,))
        return _api_key(row) if row else None

    @_rerun_on_conflict
    def create_dashboard_session(self, token_hash: str, key_id: int, seconds: int) -> None:
        """A new session for `seconds`; expired ones are removed on the way."""
        with self.transaction() as cur:
            self._run(cur, "purge_dashboard_sessions")
            self._run(cur, "insert_dashboard_session", (token_hash, key_id, int(seconds)))

    def dashboard_session_key(self, token_hash: str) -> int | None:
        """The key id of a live dashboard session, None when it ended (logout) or expired."""
        key_id = self.db.value("dashboard_session_key", (token_hash,))
        return int(key_id) if key_id is not None else None

    @_rerun_on_conflict
    def end_dashboard_session(self, token_hash: str) -> None:
        """Ends this session (and clears expired ones)."""
        with self.transaction() as cur:
            self._run(cur, "delete_dashboard_session", (token_hash,))

    def job_counts(self, job_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Recipient counts by status of several jobs: {job_id: {status: n}}."""
        if not job_ids:
            return {}
        out: dict[int, dict[str, int]] = {int(i): {} for i in job_ids}
        for r in self.db.all("job_counts", list(job_ids), ids=_placeholders(len(job_ids))):
            out[int(r["job_id"])][r["status"]] = int(r["n"])
        return out

    def send_rate(self, job_id: int) -> list[tuple[datetime, int]]:
        """Recipients of a job sent per minute (UTC), oldest first; minutes without sends are
        absent."""
        return [(datetime.strptime(r["minute"], "%Y-%m-%d %H:%M").replace(tzinfo=UTC),
                 int(r["n"])) for r in self._all("send_rate", (job_id,))]


    # --- SMTP connection slots (SMTP_MAX_CONNECTIONS shared by every runner) ---------------
    def acquire_smtp_slot(self, holder: str, size: int, lease: float,
                          capped: bool = False) -> int | None:
        """Take a free or expired one of slots 1..`size` for `holder` under a lease of `lease`
        seconds; None when all are held. Missing slot rows are created first. `capped`: `size`
        is a learned cap below the configured number, so slots above it may still be held by
        connections opened before it was lowered, and they count."""
        slot = self._take_smtp_slot(holder, size, lease, capped)
        if slot is None and self._ensure_smtp_slots(size):
            slot = self._take_smtp_slot(holder, size, lease, capped)
        return slot

    def _take_smtp_slot(self, holder: str, size: int, lease: float,
                        capped: bool) -> int | None:
        if capped:
            return self._take_capped_smtp_slot(holder, size, lease)
        with self.transaction() as cur:
            self._run(cur, "free_smtp_slot", (size,))
            slot = fetch_value(cur)
            if slot is None:
                return None
            self._run(cur, "take_smtp_slot", (holder, int(lease * 1_000_000), slot))
            return int(slot)

    def _take_capped_smtp_slot(self, holder: str, size: int, lease: float) -> int | None:
        with self.transaction() as cur:   # every row locked: the held ones counted exactly
            self._run(cur, "smtp_slots_for_capped_take")
            rows = [(int(r["slot"]), bool(r["held"])) for r in fetch_all(cur)]
            if sum(held for _, held in rows) >= size:
                return None
            free = next((slot for slot, held in rows if not held and slot <= size), None)
            if free is None:
                return None
            self._run(cur, "take_smtp_slot", (holder, int(lease * 1_000_000), free))
            return free

    def _ensure_smtp_slots(self, size: int) -> bool:
        """Create missing rows 1..size; True when some were missing."""
        with self.transaction() as cur:
            self._run(cur, "smtp_slot_count", (size,))
            if int(fetch_value(cur)) >= size:
                return False
            cur.executemany(self.queries["insert_smtp_slot"], [(n,) for n in range(1, size + 1)])
            return True

    def renew_smtp_slot(self, slot: int, holder: str, lease: float) -> bool:
        """Extend `holder`'s lease; False when the slot is no longer its own."""
        with self.transaction() as cur:
            return self._run(cur, "renew_smtp_slot", (int(lease * 1_000_000), slot, holder)) > 0

    def release_smtp_slot(self, slot: int, holder: str, closed_by_us: bool = False) -> None:
        with self.transaction() as cur:
            self._run(cur, "release_smtp_slot", (1 if closed_by_us else 0, slot, holder))

    def smtp_slots(self) -> list[tuple[int, str | None, datetime | None]]:
        return [(int(r["slot"]), r["holder"], r["lease_expires_at"])
                for r in map(_utc, self._all("smtp_slots_all"))]

    def mark_smtp_slot_connected(self, slot: int, holder: str, when: datetime) -> None:
        with self.transaction() as cur:
            self._run(cur, "mark_smtp_slot_connected", (_naive_utc(when), slot, holder))

    def smtp_slots_connected_by_others(self, holder: str, before: datetime | None) -> int:
        """Established connections of other holders (live leases, every slot number counted,
        also those above a lowered cap), established before `before` when it is given; and
        connections closed within the last second (the server may still count them)."""
        limit = _naive_utc(before) if before is not None else None
        return int(self.db.value("smtp_slots_connected_by_others", (holder, limit, limit)))

    # --- learned caps of the far side (learned_limits.py) ----------------------------------
    def learned_caps(self) -> list[LearnedCap]:
        return [_learned_cap(r) for r in self._all("learned_caps_all")]

    @_rerun_on_conflict
    def lower_learned_cap(self, kind: str, target: str, observed: int, configured: int,
                          reason: str, hold: float) -> tuple[int, int]:
        """After a refusal while `observed` others were open: the cap becomes at most that
        (at least 1), held `hold` seconds, its success count reset. Returns (old, new): new
        is the cap in effect, lower than old when this call lowered it."""
        with self.transaction() as cur:
            self._run(cur, "learned_cap_insert", (kind, target, configured, configured, reason))
            self._run(cur, "learned_cap_for_update", (kind, target))
            old = min(int(_found(fetch_one(cur))["cap"]), configured)
            new = max(1, min(old, observed))
            hold_us = int(hold * 1_000_000)
            if new < old:
                self._run(cur, "learned_cap_lower", (new, configured, reason, hold_us, kind,
                                                     target))
                return old, new
            self._run(cur, "learned_cap_confirm", (hold_us, kind, target))
            return old, old

    @_rerun_on_conflict
    def learned_cap_successes(self, kind: str, target: str, n: int, configured: int,
                              raise_after: int) -> tuple[int, int] | None:
        """Count `n` successful sends; past the hold, every `raise_after` of them raise the cap
        by one up to `configured`. Returns (old, new) when it was raised."""
        with self.transaction() as cur:
            self._run(cur, "learned_cap_for_update", (kind, target))
            row = fetch_one(cur)
            if row is None:
                return None
            cap, successes, held = int(row["cap"]), int(row["successes"]) + n, bool(row["held"])
            if not held and cap < configured and successes >= max(1, raise_after):
                self._run(cur, "learned_cap_set", (cap + 1, 0, configured, kind, target))
                return cap, cap + 1
            self._run(cur, "learned_cap_set", (cap, successes, configured, kind, target))
            return None

    def forget_learned_cap(self, kind: str, target: str) -> bool:
        """An operator resets a cap to its configured value (`mailjobs senders reset-cap`)."""
        with self.transaction() as cur:
            return self._run(cur, "learned_cap_delete", (kind, target)) > 0

    # --- deliverability: suppression list, unsubscribe, bounces ----------------------------
    @staticmethod
    def _suppression(row: Row) -> Suppression:
        return _record(Suppression, row)

    @_rerun_on_conflict
    def add_suppression(self, api_key_id: int, email: str, reason: str,
                        job_id: int | None = None, recipient_id: int | None = None,
                        detail: str | None = None,
                        event_of: int | None = None) -> tuple[Any, bool]:
        """Put an address on a key's list; returns the entry and whether it is new (an address
        listed already keeps its first entry). `event_of`: the recipient who unsubscribed (its
        recipient.unsubscribed event is written with a new entry)."""
        with self.transaction() as cur:
            added = self._run(cur, "insert_suppression", (api_key_id, email, reason, job_id,
                                                          recipient_id,
                                                          clip_error(detail) if detail else None))
            if added == 1 and event_of is not None:
                self._recipient_events(cur, "recipient.unsubscribed", [event_of],
                                       _EVENT_STATUSES["recipient.unsubscribed"])
            self._run(cur, "suppression_by_email", (api_key_id, email))
            return self._suppression(_found(fetch_one(cur))), added == 1

    def suppressions_page(self, api_key_id: int, after: int, limit: int,
                          reason: str | None = None) -> list[Any]:
        rows = self._all("suppressions_page", {"api_key_id": api_key_id, "after": after,
                                               "limit": limit, "reason": reason})
        return [self._suppression(r) for r in rows]

    def suppressions_of_email(self, email: str, api_key_id: int | None) -> list[Any]:
        """An address's suppression entries: one key's, or (None) every key's."""
        rows = self._all("suppressions_of_email", {"email": email, "api_key_id": api_key_id})
        return [self._suppression(r) for r in rows]

    def remove_suppression(self, api_key_id: int, email: str) -> bool:
        with self.transaction() as cur:
            return self._run(cur, "delete_suppression", (api_key_id, email)) > 0

    def suppressed_count(self, job_id: int) -> int:
        return int(self.db.value("suppressed_count", (job_id,)))

    def suppressed_claims(self, api_key_id: int, ids: Sequence[int]) -> dict[int, str]:
        """Of these claimed recipients, those whose address the key has suppressed since the
        job was stored: {recipient id: reason}."""
        if not ids:
            return {}
        rows = self.db.all("suppressed_claims", (api_key_id, *ids), ids=_placeholders(len(ids)))
        return {int(r["id"]): r["reason"] for r in rows}

    def unsubscribe_target(self, recipient_id: int, api_key_id: int) -> tuple[str, int] | None:
        """(address, job id) of a recipient of that key's jobs; None when there is none."""
        row = self._one("unsubscribe_target", (recipient_id,))
        if row is None or int(row["api_key_id"]) != api_key_id:
            return None
        return row["to_email"], int(row["job_id"])

    def unsubscribe(self, recipient_id: int, api_key_id: int) -> tuple[str, bool] | None:
        """One-click unsubscribe of a recipient: its address goes on its job's key's list.
        Returns (address, newly added), or None when no such recipient of that key exists."""
        target = self.unsubscribe_target(recipient_id, api_key_id)
        if target is None:
            return None
        entry, added = self.add_suppression(api_key_id, target[0], "unsubscribed", target[1],
                                            recipient_id, "one-click unsubscribe (RFC 8058)",
                                            event_of=recipient_id)
        return entry.email, added

    def bounce_senders(self) -> list[str]:
        """Senders whose mailbox a bounce check can read: an OAuth grant of their own or a
        delegated service-account key (their address's or their domain's)."""
        return [row["email"] for row in self._all("credentialed_senders")]

    # --- verified send-as addresses (issue 18) -----------------------------------------------
    def credentialed_senders(self) -> list[str]:
        return [row["email"] for row in self._all("credentialed_senders")]

    def claim_send_as_check(self, sender: str, interval: int) -> bool:
        """Whether this process reads `sender`'s send-as list now (one runner per interval)."""
        with self.transaction() as cur:
            return self._run(cur, "claim_send_as_check", (interval, sender)) > 0

    def save_send_as(self, account: str, entries: Sequence[tuple[str, bool, str | None]],
                     interval: int) -> None:
        """Replace the account's send-as list: (address, is_primary, verificationStatus)."""
        with self.transaction() as cur:
            self._run(cur, "ensure_sender", (account,))
            self._run(cur, "delete_send_as", (account,))
            if entries:
                cur.executemany(self.queries["insert_send_as"],
                                [(account, a, int(p), v) for a, p, v in entries])
            self._run(cur, "send_as_read", (interval, account))

    def send_as_failed(self, account: str, error: str, interval: int) -> None:
        with self.transaction() as cur:
            self._run(cur, "send_as_failed", (error[:1000], interval, account))

    def send_as_for(self, address: str) -> list[tuple[str, str, str | None, bool, str | None]]:
        """(kind, account, address, is_primary, verificationStatus) rows about `address`:
        kind 'list' (a known list names it), 'own' (its own credentials), 'known' (some list
        is known)."""
        return _send_as_rows(self._all("send_as_for", (address,) * 5))

    def verified_send_as(self, limit: int) -> list[str]:
        return [row["address"] for row in self._all("verified_send_as", (limit,))]

    def send_as_account(self, address: str) -> str | None:
        account = self.db.value("send_as_account", (address, address))
        return str(account) if account is not None else None

    def claim_bounce_check(self, sender: str, interval: int) -> tuple[bool, datetime | None]:
        """Whether this process checks `sender`'s mailbox now (at most one runner per
        interval), and until when the DSNs were processed already."""
        with self.transaction() as cur:
            if self._run(cur, "claim_bounce_check", (interval, sender)) == 0:
                return False, None
            self._run(cur, "bounces_checked_at", (sender,))
            checked = _aware(fetch_value(cur))
        return True, checked

    def set_bounces_checked(self, sender: str, until: datetime) -> None:
        when = _naive_utc(until)
        with self.transaction() as cur:
            self._run(cur, "set_bounces_checked", (when, when, sender))

    def known_bounce_messages(self, sender: str, gmail_ids: Sequence[str]) -> set[str]:
        known: set[str] = set()
        for start in range(0, len(gmail_ids), 500):
            chunk = list(gmail_ids[start:start + 500])
            with self.transaction() as cur:
                self._run(cur, "known_bounce_messages", (sender, *chunk),
                          ids=_placeholders(len(chunk)))
                known.update(row["gmail_id"] for row in fetch_all(cur))
        return known

    @_rerun_on_conflict
    def record_bounce(self, sender: str, gmail_id: str, message_id: str | None,
                      kind: str | None, error_code: str | None,
                      error: str | None, named: Sequence[str] = (),
                      guess: str | None = None) -> dict[str, Any] | None:
        """Record one mailbox message a bounce check read, in one transaction: a DSN matched
        to its recipient by Message-ID marks it `bounced`; a hard one (kind "hard") also
        suppresses the address for the job's key. A complaint (kind "complaint", an ARF report)
        leaves the recipient `sent` (it was delivered) with error_code `complaint`, and
        suppresses the address (reason `complaint`). None when the message was recorded before.

        Attribution (`attributed`): the Message-ID must be the recipient's own, and when the
        report names recipients (`named`) the recipient's address must be one of them; outcome
        `mismatched` otherwise. Kind "unreadable" is recorded as such and acts on nobody.
        What a report does is bounce_rules.decide's; this writes it.
        """
        with self.transaction() as cur:
            found = None
            if bounce_rules.looks_up(kind, message_id):
                self._run(cur, "bounce_recipient", (message_id, sender))
                row = fetch_one(cur)
                found = _record(BounceTarget, row) if row is not None else None
            decision = bounce_rules.decide(kind, found, named, guess)
            target = decision.target
            if not self.db.insert_unique(cur, "insert_bounce_message", (
                    sender, gmail_id, decision.outcome,
                    target.recipient_id if target is not None else None)):
                return None   # another runner read it first
            result: dict[str, Any] = {"outcome": decision.outcome, "recipient_id": None,
                                      "marked": False, "suppressed": False}
            if target is None:
                return result
            rid = target.recipient_id
            result.update(recipient_id=rid, job_id=target.job_id, email=target.to_email)
            if decision.mark == "complained":
                result["marked"] = self._run(cur, "mark_complained",
                                             (clip_error(error), rid)) > 0
            else:
                result["marked"] = self._run(cur, "mark_bounced",
                                             (error_code, clip_error(error), rid)) > 0
            if result["marked"] and decision.event is not None:
                self._recipient_events(cur, decision.event, [rid],
                                       _EVENT_STATUSES[decision.event])
            if decision.suppress is not None:
                result["suppressed"] = self._run(cur, "insert_suppression", (
                    target.api_key_id, target.to_email, decision.suppress, target.job_id, rid,
                    clip_error(error))) == 1
            return result

    # --- data retention (retention.py) ----------------------------------------------------
    # Every batch is one short transaction over rows of one finished job, locked by its job row
    # first; the rows are found without locking and changed by primary key (queries.sql).
    def db_now(self) -> datetime:
        """The database's clock (UTC): retention cut-offs are taken from it, not the host's."""
        now: datetime = _found(_aware(self.db.value("db_now")))
        return now

    def purge_counts(self, erase_cutoff: datetime | None, delete_cutoff: datetime | None,
                     bounce_cutoff: datetime | None,
                     runner_cutoff: datetime) -> dict[str, int]:
        """What a purge with these cut-offs (None: that kind is off) would remove now."""
        out = dict.fromkeys(("jobs_deleted", "recipients_deleted", "jobs_erased",
                             "recipients_erased", "bounce_messages_deleted",
                             "runners_deleted", "webhook_events_deleted"), 0)
        with self.transaction() as cur:
            if delete_cutoff is not None:
                self._run(cur, "purge_count_delete", (_naive_utc(delete_cutoff),))
                row = _found(fetch_one(cur))
                out["jobs_deleted"], out["recipients_deleted"] = int(row["jobs"]), int(row["recipients"])
            if erase_cutoff is not None:
                self._run(cur, "purge_count_erase", {"cutoff": _naive_utc(erase_cutoff),
                                                     "delete_cutoff": _naive_utc(delete_cutoff)})
                row = _found(fetch_one(cur))
                out["jobs_erased"], out["recipients_erased"] = int(row["jobs"]), int(row["recipients"])
            if bounce_cutoff is not None:
                self._run(cur, "purge_count_bounce_messages", (_naive_utc(bounce_cutoff),))
                out["bounce_messages_deleted"] = int(fetch_value(cur))
                self._run(cur, "purge_count_webhook_events", (_naive_utc(bounce_cutoff),))
                out["webhook_events_deleted"] = int(fetch_value(cur))
            self._run(cur, "purge_count_runners", (_naive_utc(runner_cutoff),))
            out["runners_deleted"] = int(fetch_value(cur))
        return out

    def purge_candidates(self, kind: str, cutoff: datetime, limit: int) -> list[int]:
        """Finished jobs, oldest first, to delete whole (kind "delete") or whose recipients'
        variables to erase ("erase")."""
        name = "purge_jobs_to_delete" if kind == "delete" else "purge_jobs_to_erase"
        return [int(r["id"]) for r in self._all(name, (_naive_utc(cutoff), limit))]

    def job_recipient_statuses(self, job_id: int) -> list[str]:
        return sorted(r["status"] for r in self._all("purge_job_statuses", (job_id,)))

    @_rerun_on_conflict
    def erase_variables_batch(self, job_id: int, cutoff: datetime, status: str | None,
                              after: int, limit: int) -> tuple[int, int, int] | None:
        """Erase the variables of up to `limit` recipients of a job finished before `cutoff`:
        those of `status` with an id above `after` (None: any still holding variables).
        Returns (rows looked at, rows erased, last id), or None when the job is no longer
        finished before the cut-off (retried meanwhile, or gone)."""
        with self.transaction() as cur:
            self._run(cur, "purge_lock_job", (job_id, _naive_utc(cutoff)))
            if cur.fetchone() is None:
                return None
            if status is None:
                self._run(cur, "purge_recipient_ids_with_variables", (job_id, limit))
            else:
                self._run(cur, "purge_recipient_ids", (job_id, status, after, limit))
            ids = [int(r["id"]) for r in fetch_all(cur)]
            if not ids:
                return 0, 0, after
            self._run(cur, "set_variables_erasing", (job_id,))
            erased = self._by_ids(cur, "erase_variables", ids)
            return len(ids), erased, ids[-1]

    def _by_ids(self, cur: Any, name: str, ids: Sequence[int]) -> int:
        """Run a `WHERE id IN ({ids})` statement over `ids` in chunks of PK_CHUNK, so each
        stays a primary-key lookup that locks exactly those rows (queries.sql)."""
        changed = 0
        for start in range(0, len(ids), PK_CHUNK):
            chunk = ids[start:start + PK_CHUNK]
            changed += self._run(cur, name, chunk, ids=_placeholders(len(chunk)))
        return changed

    @_rerun_on_conflict
    def mark_variables_erased(self, job_id: int, cutoff: datetime) -> bool:
        with self.transaction() as cur:
            self._run(cur, "purge_lock_job", (job_id, _naive_utc(cutoff)))
            if cur.fetchone() is None:
                return False
            return self._run(cur, "set_variables_erased", (job_id,)) > 0

    @_rerun_on_conflict
    def delete_job_batch(self, job_id: int, cutoff: datetime,
                         limit: int) -> tuple[int, bool] | None:
        """Delete up to `limit` recipients of a job finished before `cutoff`, and the job row
        once none is left. Returns (recipients deleted, job deleted), or None when the job is
        no longer finished before the cut-off."""
        with self.transaction() as cur:
            self._run(cur, "purge_lock_job", (job_id, _naive_utc(cutoff)))
            if cur.fetchone() is None:
                return None
            self._run(cur, "purge_any_recipient_ids", (job_id, limit))
            ids = [int(r["id"]) for r in fetch_all(cur)]
            deleted = 0
            if ids:
                deleted = self._by_ids(cur, "delete_recipients", ids)
            if len(ids) < limit:   # that was the last of them: the job row goes too
                self._run(cur, "delete_job_attachment_uses", (job_id,))
                self._run(cur, "delete_job", (job_id,))
                return deleted, True
            return deleted, False

    @_rerun_on_conflict
    def delete_bounce_messages(self, cutoff: datetime, limit: int) -> int:
        with self.transaction() as cur:
            return self._run(cur, "delete_bounce_messages", (_naive_utc(cutoff), limit))

    @_rerun_on_conflict
    def delete_delivered_webhooks(self, cutoff: datetime, limit: int) -> int:
        """Up to `limit` events of webhook POSTs delivered before `cutoff`, and those POSTs
        once none of their events is left; returns the events deleted."""
        with self.transaction() as cur:
            self._run(cur, "purge_delivered_webhook_events", (_naive_utc(cutoff), limit))
            rows = [(int(r["id"]), int(r["delivery_id"])) for r in fetch_all(cur)]
            if not rows:
                return 0
            deleted = self._by_ids(cur, "delete_webhook_events_by_id", [e for e, _ in rows])
            self._by_ids(cur, "delete_emptied_webhook_deliveries",
                         sorted({d for _, d in rows}))
            return deleted

    @_rerun_on_conflict
    def delete_dead_runners(self, cutoff: datetime, limit: int) -> int:
        with self.transaction() as cur:
            return self._run(cur, "delete_dead_runners", (_naive_utc(cutoff), limit))

    def claim_lease(self, name: str, holder: str, interval: float, lease: float) -> bool:
        """Whether `holder` runs the periodic task `name` now: at most once per `interval`
        seconds over every runner on every host, and never while another holder's lease of
        `lease` seconds lasts. One UPDATE of one row (works on Galera, unlike GET_LOCK)."""
        args = (int(interval * 1_000_000), holder, int(lease * 1_000_000), name)
        try:
            with self.transaction() as cur:
                if self._run(cur, "claim_lease", args) == 1:
                    return True
                self._run(cur, "lease_row", (name,))
                if cur.fetchone() is not None:
                    return False
            with self.transaction() as cur:   # first use: the row is created on its own
                self._run(cur, "ensure_lease", (name,))
            with self.transaction() as cur:
                return self._run(cur, "claim_lease", args) == 1
        except TransactionConflict:
            # another runner updated the row at the same moment (on Galera: a certification
            # failure at commit, reported as a deadlock): it has the turn, not an outage
            return False

    def renew_lease(self, name: str, holder: str, lease: float) -> bool:
        with self.transaction() as cur:
            return self._run(cur, "renew_lease", (int(lease * 1_000_000), name, holder)) > 0

    def finish_lease(self, name: str, holder: str, result: str) -> None:
        with self.transaction() as cur:
            self._run(cur, "finish_lease", (result[:1000], name, holder))

    def lease(self, name: str) -> dict[str, Any] | None:
        """name, due_at, holder, lease_expires_at, started_at, finished_at, last_result."""
        row = self._one("lease_row", (name,))
        return _utc(row) if row else None

    # --- webhooks: the events outbox and its deliveries (webhooks.py, webhook_dispatch.py) ---
    def _recipient_events(self, cur: Any, kind: str, ids: Sequence[int],
                          statuses: Sequence[str]) -> int:
        """In the caller's transaction: `kind` events of these recipients (those in one of
        `statuses`) for every enabled endpoint of their job's key that takes the type. One
        INSERT ... SELECT for all the ids; nothing is read back."""
        if not ids:
            return 0
        return self._events_of(cur, kind, "recipients_by_ids", json.dumps(list(ids)), statuses)

    def _job_recipient_events(self, cur: Any, kind: str, job_id: int,
                              statuses: Sequence[str]) -> int:
        """The same for every recipient of one job in one of `statuses`."""
        return self._events_of(cur, kind, "recipients_of_job", job_id, statuses)

    def _events_of(self, cur: Any, kind: str, source: str, arg: Any,
                   statuses: Sequence[str]) -> int:
        """webhook_recipient_events over the recipients of `source` (its argument `arg`)."""
        sql = self.queries["webhook_recipient_events"].format(
            recipients=self.queries[source], statuses=_placeholders(len(statuses)))
        written: int = cur.execute(sql, (kind, kind, arg, *statuses, kind))
        return written

    def _job_events(self, cur: Any, kind: str, job_ids: Sequence[int],
                    counts: dict[str, int] | None = None) -> int:
        if not job_ids:
            return 0
        return self._run(cur, "webhook_job_events",
                         (kind, kind, json.dumps(counts) if counts is not None else None,
                          kind, *job_ids), ids=_placeholders(len(job_ids)))

    def create_webhook(self, api_key_id: int, url: str, description: str | None,
                       events: Sequence[str], batch_size: int, secret: bytes) -> int:
        with self.transaction() as cur:
            self._run(cur, "insert_webhook_endpoint", (api_key_id, url, description,
                                                       json.dumps(list(events)), batch_size,
                                                       secret))
            return int(cur.lastrowid)

    def webhook(self, endpoint_id: int) -> dict[str, Any] | None:
        """An endpoint with its secrets (encrypted: `secret`, and `previous_secret` while it
        still signs)."""
        row = self._one("webhook_endpoint", (endpoint_id,))
        return _webhook(row) if row else None

    def webhooks_page(self, api_key_id: int | None, after: int,
                      limit: int) -> list[dict[str, Any]]:
        rows = self._all("webhook_endpoints_page",
                         {"api_key_id": api_key_id, "after": after, "limit": limit})
        return [_webhook(r) for r in rows]

    def delete_webhook(self, endpoint_id: int) -> bool:
        """The endpoint, its deliveries and its undelivered events go."""
        with self.transaction() as cur:
            self._run(cur, "delete_webhook_events", (endpoint_id,))
            self._run(cur, "delete_webhook_deliveries", (endpoint_id,))
            return self._run(cur, "delete_webhook_endpoint", (endpoint_id,)) > 0

    def rotate_webhook_secret(self, endpoint_id: int, secret: bytes, overlap: int) -> None:
        with self.transaction() as cur:
            self._run(cur, "rotate_webhook_secret", (int(overlap), secret, endpoint_id))

    @_rerun_on_conflict
    def claim_webhook_endpoints(self, runner_id: str, healthy: int, failing: int,
                                lease: float) -> list[tuple[int, bool]]:
        """Endpoints with something due, taken for `lease` seconds (SKIP LOCKED): up to
        `healthy` that are not failing (those first) and up to `failing` whose last attempt
        failed; (id, failing) each."""
        with self.transaction() as cur:
            self._run(cur, "webhook_due_endpoints", (healthy + failing,))
            taken: list[tuple[int, bool]] = []
            room = {False: healthy, True: failing}
            for row in fetch_all(cur):
                lane = bool(row["failing"])
                if room[lane] > 0:
                    room[lane] -= 1
                    taken.append((int(row["id"]), lane))
            ids = [i for i, _ in taken]
            if ids:
                self._run(cur, "claim_webhook_endpoints", (runner_id, int(lease * 1_000_000), *ids),
                          ids=_placeholders(len(ids)))
            return taken

    def release_webhook_endpoint(self, endpoint_id: int, runner_id: str) -> None:
        with self.transaction() as cur:
            self._run(cur, "release_webhook_endpoint", (endpoint_id, runner_id))

    @_rerun_on_conflict
    def next_webhook_deliveries(self, endpoint_id: int, runner_id: str,
                                new_msg_id: Callable[[], str], lease: float,
                                events: int) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The endpoint (with its secrets) and its oldest undelivered POSTs (about `events`
        events in all, at least one POST), in the order they must be sent; when fewer are
        pending, new ones are made now from its oldest events not yet in one (batch_size
        each; `new_msg_id()` gives each its webhook-id). The lease is renewed for `lease`
        seconds. None when it is no longer this runner's or the endpoint was disabled.

        The lease is renewed by the transaction's last statement: the endpoint's row is locked
        only for the commit, not for the whole round, so a runner's recording transaction,
        whose outbox INSERT ... SELECT reads that row (a shared lock), never waits behind a
        round; a round whose lease turned out lost is rolled back whole."""
        try:
            with self.transaction() as cur:
                self._run(cur, "webhook_endpoint", (endpoint_id,))
                row = fetch_one(cur)
                if row is None:
                    return None
                endpoint = _webhook(row)
                limit = max(1, events // endpoint["batch_size"])
                self._run(cur, "webhook_pending_deliveries", (endpoint_id, limit))
                heads = [(int(r["id"]), r["msg_id"], int(r["attempts"])) for r in fetch_all(cur)]
                if len(heads) < limit:
                    heads += self._new_webhook_deliveries(cur, endpoint, new_msg_id,
                                                          limit - len(heads))
                out: list[dict[str, Any]] = []
                if heads:
                    self._run(cur, "webhook_delivery_payloads", [h[0] for h in heads],
                              ids=_placeholders(len(heads)))
                    payloads: dict[int, list[str]] = {}
                    for r in fetch_all(cur):
                        payloads.setdefault(int(r["delivery_id"]), []).append(r["payload"])
                    out = [{"delivery_id": i, "msg_id": m, "attempts": a,
                            "payloads": payloads.get(i, [])} for i, m, a in heads]
                if self._run(cur, "renew_webhook_lease",
                             (int(lease * 1_000_000), endpoint_id, runner_id)) == 0:
                    raise _LeaseLost
                return endpoint, out
        except _LeaseLost:
            return None

    def _new_webhook_deliveries(self, cur: Any, endpoint: dict[str, Any],
                                new_msg_id: Callable[[], str],
                                count: int) -> list[tuple[int, str, int]]:
        size = endpoint["batch_size"]
        self._run(cur, "webhook_unbatched_events", (endpoint["id"], count * size))
        events = [int(r["id"]) for r in fetch_all(cur)]
        if not events:
            return []
        events.sort()
        chunks = [events[i:i + size] for i in range(0, len(events), size)]
        msg_ids = [new_msg_id() for _ in chunks]
        cur.executemany(self.queries["insert_webhook_delivery"],
                        [(endpoint["id"], m, len(c)) for m, c in zip(msg_ids, chunks,
                                                                     strict=True)])
        self._run(cur, "webhook_deliveries_by_msg_id", msg_ids, ids=_placeholders(len(msg_ids)))
        ids = {r["msg_id"]: int(r["id"]) for r in fetch_all(cur)}
        # chunks are consecutive runs of the sorted ids: one WHEN per delivery (its last id),
        # not one per event (a CASE of n WHENs costs the database n comparisons a row)
        pairs = [(c[-1], ids[m]) for m, c in zip(msg_ids, chunks, strict=True)]
        changed = cur.execute(self.queries["batch_webhook_events"].format(
            case=" ".join(["WHEN id <= %s THEN %s"] * len(pairs)),
            ids=_placeholders(len(events))),
            [v for pair in pairs for v in pair] + events)
        if changed != len(events):   # another runner batched them: its lease outlived ours
            raise TransactionConflict("webhook events were batched by another runner")
        return [(ids[m], m, 0) for m in msg_ids]

    @_rerun_on_conflict
    def webhooks_delivered(self, endpoint_id: int, delivery_ids: Sequence[int], runner_id: str,
                           status: int) -> None:
        if not delivery_ids:
            return
        with self.transaction() as cur:
            cur.execute(self.queries["webhook_delivered"].format(
                ids=_placeholders(len(delivery_ids))), (status, *delivery_ids))
            self._run(cur, "webhook_endpoint_succeeded", (endpoint_id, runner_id))

    @_rerun_on_conflict
    def webhook_attempt_failed(self, endpoint_id: int, delivery_id: int, runner_id: str,
                               status: int | None, error: str, delay: float,
                               disable_reason: str | None) -> None:
        """A failed attempt: the delivery (and its endpoint, which delivers in order) is due
        again after `delay` seconds; with `disable_reason` the endpoint is disabled."""
        us = int(delay * 1_000_000)
        with self.transaction() as cur:
            self._run(cur, "webhook_attempt_failed", (status, error[:1000], us, delivery_id))
            self._run(cur, "webhook_endpoint_failed", {
                "delay": us, "reason": disable_reason[:1000] if disable_reason else None,
                "id": endpoint_id, "runner": runner_id})

    def webhook_deliveries(self, endpoint_id: int, before: int | None,
                           limit: int) -> list[dict[str, Any]]:
        rows = self._all("webhook_deliveries_page",
                         (endpoint_id, before if before is not None else 2**63 - 1, limit))
        return [_delivery(r) for r in rows]

    def webhook_delivery(self, delivery_id: int) -> dict[str, Any] | None:
        row = self._one("webhook_delivery", (delivery_id,))
        return _delivery(row) if row else None

    def retry_webhook_delivery(self, endpoint_id: int, delivery_id: int) -> bool:
        """Due now (sent again when it was delivered), its endpoint enabled and due now."""
        with self.transaction() as cur:
            if self._run(cur, "retry_webhook_delivery", (delivery_id, endpoint_id)) == 0:
                self._run(cur, "webhook_delivery", (delivery_id,))
                row = fetch_one(cur)
                if row is None or int(row["endpoint_id"]) != endpoint_id:
                    return False
            self._run(cur, "webhook_endpoint_due_now", (endpoint_id,))
            return True

    def oldest_undelivered_event_age(self) -> float:
        age = self.db.value("oldest_undelivered_event_age")
        return float(age) if age is not None else 0.0


    # --- attachments (attachments/store.py) --------------------------------------------------
    def _use_attachments(self, cur: Any, job_id: int, ids: Sequence[int],
                         job_list: list[dict[str, Any]] | None) -> None:
        """In create_job's transaction: the attachments still exist (locked until the commit, so
        a DELETE waits and then sees the job), the job's uses of them, their last use."""
        unique = sorted(set(ids))
        marks = _placeholders(len(unique))
        self._run(cur, "lock_attachments", unique, ids=marks)
        found = {int(row["id"]) for row in fetch_all(cur)}
        if len(found) != len(unique):
            raise AttachmentGone(f"attachment(s) {sorted(set(unique) - found)} were deleted")
        if job_list:
            self._run(cur, "set_job_attachments", (json.dumps(job_list), job_id))
        cur.executemany(self.queries["insert_job_attachment"], [(job_id, i) for i in unique])
        self._run(cur, "touch_attachments", unique, ids=marks)

    def start_attachment(self, public_id: str, api_key_id: int, content_type: str,
                         filename: str | None) -> int:
        with self.transaction() as cur:
            self._run(cur, "insert_attachment", (public_id, api_key_id, content_type, filename))
            return int(cur.lastrowid)

    def add_attachment_chunk(self, attachment_id: int, seq: int, data: bytes) -> None:
        with self.transaction() as cur:
            self._run(cur, "insert_attachment_chunk", (attachment_id, seq, data))

    def finish_attachment(self, attachment_id: int, api_key_id: int, sha256: bytes, size: int,
                          chunks: int) -> Attachment:
        """Mark an upload complete; when the key has these bytes already (the same sha256),
        the new copy is deleted and the existing one returned."""
        try:
            with self.transaction() as cur:
                self._run(cur, "finish_attachment", (sha256, size, chunks, attachment_id))
                self._run(cur, "attachment_row", (attachment_id,))
                return _attachment(_found(fetch_one(cur)))
        except DuplicateKey:
            pass
        self.drop_attachment(attachment_id)
        existing = self._one("attachment_by_sha", (api_key_id, sha256))
        if existing is None:    # deleted in between: a very unlikely race; say so
            raise AttachmentGone("the identical attachment was deleted during the upload")
        with self.transaction() as cur:
            self._run(cur, "touch_attachments", (existing["id"],), ids="%s")
        return _attachment(existing)

    def attachment_by_sha(self, api_key_id: int, sha256: bytes) -> Attachment | None:
        row = self._one("attachment_by_sha", (api_key_id, sha256))
        return _attachment(row) if row else None

    def attachment(self, api_key_id: int, public_id: str) -> Attachment | None:
        row = self._one("attachment_by_public_id", (public_id, api_key_id))
        return _attachment(row) if row else None

    def attachment_row(self, attachment_id: int) -> Attachment | None:
        row = self._one("attachment_row", (attachment_id,))
        return _attachment(row) if row else None

    def attachments_of_key(self, api_key_id: int, public_ids: Sequence[str]
                           ) -> dict[str, Attachment]:
        if not public_ids:
            return {}
        unique = sorted(set(public_ids))
        with self.transaction() as cur:
            self._run(cur, "attachments_by_public_ids", (api_key_id, *unique),
                      ids=_placeholders(len(unique)))
            return {a.public_id: a for a in map(_attachment, fetch_all(cur))}

    def attachment_bytes(self, attachment_id: int) -> bytes:
        """The whole file (the caller bounds how many it holds)."""
        with self.transaction() as cur:
            self._run(cur, "attachment_chunks", (attachment_id,))
            return b"".join(bytes(row["data"]) for row in fetch_all(cur))

    def delete_attachment(self, api_key_id: int, public_id: str) -> tuple[bool, int | None]:
        """(found, the id of an unfinished job that uses it). Deleted when found and unused."""
        with self.transaction() as cur:
            self._run(cur, "attachment_for_update", (public_id, api_key_id))
            attachment_id = fetch_value(cur)
            if attachment_id is None:
                return False, None
            self._run(cur, "attachment_used_by", (attachment_id,))
            used = fetch_value(cur)
            if used is not None:
                return True, int(used)
            self._drop_attachment(cur, int(attachment_id))
            return True, None

    def drop_attachment(self, attachment_id: int) -> None:
        with self.transaction() as cur:
            self._drop_attachment(cur, attachment_id)

    def _drop_attachment(self, cur: Any, attachment_id: int) -> None:
        self._run(cur, "delete_attachment_chunks", (attachment_id,))
        self._run(cur, "delete_attachment_uses", (attachment_id,))
        self._run(cur, "delete_attachment", (attachment_id,))

    def job_attachment_list(self, job_id: int) -> list[dict[str, Any]]:
        row = self._one("job_attachment_list", (job_id,))
        return (_json(row["attachments"]) or []) if row else []

    def unused_attachment_count(self, cutoff: datetime) -> int:
        stale = self.db_now() - timedelta(days=1)
        return len(self._all("unused_attachments", {"cutoff": _naive_utc(cutoff),
                                                    "stale": _naive_utc(stale),
                                                    "limit": 2**62}))

    @_rerun_on_conflict
    def delete_unused_attachments(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` attachments unused since `cutoff` (and stopped uploads)."""
        stale = self.db_now() - timedelta(days=1)
        with self.transaction() as cur:
            self._run(cur, "unused_attachments", {"cutoff": _naive_utc(cutoff),
                                                  "stale": _naive_utc(stale), "limit": limit})
            ids = [int(row["id"]) for row in fetch_all(cur)]
        for attachment_id in ids:   # one short transaction each (a file may be many chunks)
            with self.transaction() as cur:
                self._run(cur, "attachment_used_by", (attachment_id,))
                if cur.fetchone() is None:
                    self._drop_attachment(cur, attachment_id)
        return len(ids)

# The recipient statuses of each recipient event (webhooks.EVENT_TYPES), and the event an
# outcome's final status writes.
_EVENT_STATUSES = {"recipient.sent": ("sent",), "recipient.failed": ("failed", "expired"),
                   "recipient.suppressed": ("suppressed",), "recipient.bounced": ("bounced",),
                   "recipient.complained": ("sent",),
                   "recipient.unsubscribed": ("sent", "bounced", "failed", "queued", "retrying",
                                              "sending", "in_doubt", "cancelled", "expired",
                                              "suppressed")}
_RECIPIENT_EVENT_OF = {"failed": "recipient.failed", "expired": "recipient.failed",
                       "suppressed": "recipient.suppressed"}


def _webhook(row: Row) -> dict[str, Any]:
    """An endpoint (queries.sql webhook_endpoint: id, api_key_id, url, description, events,
    batch_size, enabled, disabled_reason, disabled_at, failing_since, next_attempt_at,
    created_at, previous_secret_until, secret, previous_secret)."""
    out = _utc(row)
    out.update(id=int(out["id"]), api_key_id=int(out["api_key_id"]),
               events=_json(out["events"]) or [], batch_size=int(out["batch_size"]),
               enabled=bool(out["enabled"]))
    for name in ("secret", "previous_secret"):
        if out[name] is not None:
            out[name] = bytes(out[name])
    return out


def _delivery(row: Row) -> dict[str, Any]:
    """A webhook POST (queries.sql webhook_delivery: id, endpoint_id, msg_id, status, events,
    attempts, last_attempt_at, last_status_code, last_error, next_attempt_at, delivered_at,
    created_at)."""
    out = _utc(row)
    out.update(id=int(out["id"]), endpoint_id=int(out["endpoint_id"]),
               events=int(out["events"]), attempts=int(out["attempts"]))
    return out


def _attachment(row: Row) -> Attachment:
    return _record(Attachment, row, sha256=bytes(row["sha256"] or b""))


def _naive_utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None


def _aware(value: Any) -> Any:
    """MySQL DATETIMEs are stored in UTC (session time_zone +00:00); make that explicit."""
    return value.replace(tzinfo=UTC) if isinstance(value, datetime) else value


def _utc(row: Row) -> Row:
    """The row with its DATETIMEs UTC-aware (_aware)."""
    return {k: v.replace(tzinfo=UTC) if isinstance(v, datetime) else v for k, v in row.items()}


def _found(row: R | None) -> R:
    """The row of a statement that always returns one."""
    if row is None:
        raise DaoError("a statement that always returns a row returned none")
    return row


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _counts(rows: Iterable[Row]) -> dict[str, int]:
    """{status: n} of a `SELECT status, COUNT(*) AS n ... GROUP BY status`."""
    return {r["status"]: int(r["n"]) for r in rows}


_FIELDS: dict[type[Any], tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _fields(cls: type[Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A records dataclass's field names, and those of them that hold a datetime."""
    plan = _FIELDS.get(cls)
    if plan is None:
        fields = dataclasses.fields(cls)
        plan = _FIELDS[cls] = (tuple(f.name for f in fields),
                               tuple(f.name for f in fields if "datetime" in str(f.type)))
    return plan


def _record(cls: type[R], row: Row, **converted: Any) -> R:
    """A records dataclass from a row BY COLUMN NAME: the row's columns named as the class's
    fields (DATETIMEs UTC-aware), with `converted` values over them; a field the statement
    does not select keeps its default."""
    names, times = _fields(cls)
    values = {k: row[k] for k in names if k in row}
    for k in times:
        v = values.get(k)
        if v is not None:
            values[k] = v.replace(tzinfo=UTC)
    values.update(converted)
    return cls(**values)


def _api_key(row: Row) -> ApiKey:
    return _record(ApiKey, row, allowed_senders=_json(row["allowed_senders"]) or [],
                   is_operator=bool(row["is_operator"]))


def _job(row: Row, counts: dict[str, int] | None = None) -> Job:
    """A job; `attachments` None when the statement does not read them."""
    return _record(Job, row, variables=_json(row["variables"]) or {}, counts=counts or {},
                   template_variants=_json(row.get("template_variants")),
                   metadata=_json(row.get("metadata")),
                   attachments=(_json(row["attachments"]) or []) if "attachments" in row
                   else None)


class _LeaseLost(Exception):
    """A webhook round found its endpoint's lease gone at commit: roll the round back."""


def _recipient_row(r: NewRecipient) -> RecipientRow:
    return (r.to_email, r.name, json.dumps(r.variables) if r.variables is not None else None,
            r.locale, r.locale_used, json.dumps(r.metadata) if r.metadata is not None else None,
            json.dumps(r.attachments) if r.attachments else None)


def _send_as_rows(rows: Sequence[Row]) -> list[tuple[str, str, str | None, bool, str | None]]:
    """send_as_for's rows as check_sender gets them: (kind, account, address, is_primary,
    verification_status), in the statement's order."""
    return [(r["kind"], r["account"], r["address"], bool(r["is_primary"]),
             r["verification_status"]) for r in rows]


def _plan(row: Row) -> SenderPlan:
    """sender_plan's row: the sender's rate and daily cap (None: the settings'), its backlog
    and its sends in the last 24 hours."""
    rate, cap = row["rate_per_minute"], row["daily_cap"]
    return (None if rate is None else int(rate), None if cap is None else int(cap),
            int(row["backlog"]), int(row["sent_24h"]))


def _template(row: Row) -> StoredTemplate:
    return _record(StoredTemplate, row, variants=_json(row.get("variants")))


def _runner(row: Row) -> dict[str, Any]:
    """id, host, pid, kind, state, current_job_id, sent_count, failed_count, started_at,
    heartbeat_at (queries.sql all_runners)."""
    return _utc(row)


def _learned_cap(row: Row) -> LearnedCap:
    return _record(LearnedCap, row)


def _recipient(row: Row) -> Recipient:
    """A recipient; `metadata` and `attachments` None when the statement does not read them."""
    return _record(Recipient, row, variables=_json(row["variables"]),
                   in_doubt=bool(row["in_doubt"]), metadata=_json(row.get("metadata")),
                   attachments=_json(row.get("attachments")))


# What pymysql's escape_string does (a backslash before each of these), as str.replace passes:
# one pass a character, in C, over a whole chunk's text (str.translate is ten times slower).
_ESCAPES = (("\\", "\\\\"), ("'", "\\'"), ('"', '\\"'), ("\0", "\\0"), ("\n", "\\n"),
            ("\r", "\\r"), ("\x1a", "\\Z"))
_FIELD, _ROW, _NULL = "\x01", "\x02", "\x03"   # markers, used only when no value holds one


def insert_values(job_id: int | str, rows: Sequence[RecipientRow], no_backslash: bool,
                  max_bytes: int) -> Iterator[str]:
    """The VALUES lists of multi-row INSERTs of `rows` (RecipientRow), each under `max_bytes`
    by an upper bound of its size (4 bytes a character), so no statement passes
    max_allowed_packet (the server drops the connection then: a 503 for a too-large
    request). Escaped as pymysql's escape() does, with NO_BACKSLASH_ESCAPES or without: the
    values are joined with marker characters, escaped in one pass per special character, and
    the markers then become the quotes, commas and NULLs between them. job_id: a number, or
    JOB_ID (the session variable of the job being stored)."""
    if not rows:
        return
    job = JOB_ID if job_id == JOB_ID else int(job_id)
    width = len(rows[0])
    nulls = sum(v is None for row in rows for v in row)
    flat = _ROW.join([_FIELD.join([_NULL if v is None else v for v in row]) for row in rows])
    if (flat.count(_FIELD), flat.count(_ROW), flat.count(_NULL)) != \
            ((width - 1) * len(rows), len(rows) - 1, nulls):   # a value holds a marker
        yield from _values_each(job_id, rows, no_backslash, max_bytes)
        return
    if 4 * len(flat) + 64 * len(rows) > max_bytes and len(rows) > 1:
        half = len(rows) // 2
        yield from insert_values(job_id, rows[:half], no_backslash, max_bytes)
        yield from insert_values(job_id, rows[half:], no_backslash, max_bytes)
        return
    for special, escaped in (_ESCAPES[1:2] if no_backslash else _ESCAPES):
        if special in flat:
            flat = flat.replace(special, "''" if no_backslash else escaped)
    values = flat.replace(_FIELD, "','").replace(_ROW, f"'),({job},'")
    yield f"({job},'{values}')".replace(f"'{_NULL}'", "NULL")


def _values_each(job_id: int | str, rows: Sequence[RecipientRow], no_backslash: bool,
                 max_bytes: int) -> Iterator[str]:
    """insert_values, each value escaped on its own (as pymysql does)."""
    def literal(value: str | None) -> str:
        if value is None:
            return "NULL"
        return "'" + (value.replace("'", "''") if no_backslash
                      else pymysql.converters.escape_string(value)) + "'"
    job = JOB_ID if job_id == JOB_ID else int(job_id)
    out: list[str] = []
    size = 0
    for row in rows:
        text = f"({job}," + ",".join(literal(v) for v in row) + ")"
        if out and size + 4 * len(text) > max_bytes:
            yield ",".join(out)
            out, size = [], 0
        out.append(text)
        size += 4 * len(text)
    if out:
        yield ",".join(out)


def _retry_chunks(retry: Sequence[RetryOutcome],
                  max_bytes: int = 1 << 20) -> Iterator[list[RetryOutcome]]:
    """Retry outcomes in batches of one UPDATE each, under `max_bytes` of error text (an
    error may be up to 65,000 characters; max_allowed_packet is what bounds a statement)."""
    out: list[RetryOutcome] = []
    size = 0
    for row in retry:
        bound = 4 * min(len(row.error), ERROR_TEXT_MAX) + 256
        if out and size + bound > max_bytes:
            yield out
            out, size = [], 0
        out.append(row)
        size += bound
    if out:
        yield out


def _placeholders(n: int) -> str:
    return ", ".join(["%s"] * n)
