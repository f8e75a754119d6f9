"""Turning a validated send request into a stored job: the checks no schema can make
(templates compile, every recipient has every variable), de-duplication, idempotency."""
from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from pydantic import ValidationError

from mailjobs import defaults
from mailjobs.dao_mysql import Also, AttachmentGone, Dao, DuplicateKey, RecipientRow, StoredJob
from mailjobs.db import guard as db_guard
from mailjobs.locales import VariantSelector
from mailjobs.mail_message import header_text_problem
from mailjobs.records import ApiKey, Job, NewJob, NewRecipient, SenderPlan
from mailjobs.scheduling import PRIORITIES, PRIORITY_NAMES
from mailjobs.settings import Settings
from mailjobs.templating import (
    BUILTIN_VARIABLES,
    CompiledTemplates,
    TemplateCompileError,
    compile_templates,
    template_limits,
)
from mailjobs.transports import send_as
from mailjobs.web.schemas import (
    Recipient,
    RecipientIn,
    SendTemplateEmailsIn,
    TemplateIn,
    TemplatePartsIn,
    all_finite,
    validate_recipients,
)

if TYPE_CHECKING:
    from mailjobs.attachments.jobs import Prepared

MAX_LISTED_ERRORS = 20


class RequestRejected(Exception):
    """A 4xx answer: status, machine code, sentence, and the fields at fault."""

    def __init__(self, status: int, code: str, message: str,
                 errors: list[tuple[str | None, str]] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        self.extra = extra or {}   # more members of the error body (e.g. `allowed`)

    @property
    def field(self) -> str | None:
        return self.errors[0][0] if self.errors else None


@dataclass(frozen=True)
class Enqueued:
    job: Job
    replayed: bool
    suppressed: int | None = None   # known when this request stored the job
    # read in the storing transaction when asked (Also): the sender's plan for the estimate
    # (Dao.sender_plan), the live runners
    plan: SenderPlan | None = None
    live_runners: int | None = None


def split_body(body: bytes) -> tuple[bytes, list[msgspec.Raw]] | None:
    """A send request's body as the JSON of its own fields (with `"recipients": []`) and its
    recipients as raw JSON slices of the body (a few dozen bytes each; no Python object per
    recipient's fields). None when the body is not an object with a `recipients` array of
    objects, or not strict JSON (NaN, ...): validated whole then, so its answer names the
    field as before."""
    if b'"attachments"' in body:
        # files are checked with every recipient at once (attachments.jobs.prepare: rendered
        # filenames, each message's size); a false match only costs the whole-body path
        return None
    try:
        fields = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
        if "recipients" not in fields:
            return None
        raws = msgspec.json.decode(fields.pop("recipients"), type=list[msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    head = b",".join(msgspec.json.encode(k) + b":" + bytes(v) for k, v in fields.items())
    return b"{" + head + (b"," if head else b"") + b'"recipients":[]}', raws


def request_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def resolve_template(dao: Dao, key: ApiKey,
                     req: SendTemplateEmailsIn) -> tuple[TemplateIn, int | None]:
    """The inline template, or the stored one the request names (exact version when given),
    with the stored version used."""
    if req.template is not None:
        return req.template, None
    stored = dao.template(key.id, req.template_name or "", req.template_version)
    if stored is None:
        which = (f"version {req.template_version} of " if req.template_version else "") + \
            f"template {req.template_name!r}"
        raise RequestRejected(400, "unknown_template", f"no {which} for this API key",
                              [("template_name", "no such stored template")])
    return TemplateIn.model_validate({"subject": stored.subject, "html": stored.html,
                                      "text": stored.text, "variants": stored.variants}
                                     ), stored.version


def check_template(t: TemplatePartsIn, settings: Settings,
                   prefix: str = "template.") -> tuple[frozenset[str], frozenset[str]]:
    """Check the template's size in bytes and compile it within TEMPLATE_MAX_NODES and
    TEMPLATE_MAX_DEPTH; returns the variables it needs and those of the subject, or raises a
    413 or 400."""
    compiled = _compile_checked(t, settings, prefix)
    return compiled.required, compiled.subject_required


def _compile_checked(t: TemplatePartsIn, settings: Settings, prefix: str) -> CompiledTemplates:
    for part in ("html", "text"):
        source = getattr(t, part)
        size = len(source.encode("utf-8", "surrogatepass")) if source is not None else 0
        if size > settings.template_max_bytes:
            raise RequestRejected(
                413, "payload_too_large", f"{prefix}{part} is {size} bytes in UTF-8, more than "
                f"TEMPLATE_MAX_BYTES ({settings.template_max_bytes})",
                [(f"{prefix}{part}", f"at most {settings.template_max_bytes} bytes")])
    try:
        compiled = compile_templates(t.subject, t.html, t.text, template_limits(settings))
    except TemplateCompileError as exc:
        raise RequestRejected(400, "template_error", f"{prefix}{exc.part} does not compile: {exc}",
                              [(f"{prefix}{exc.part}", str(exc))]) from None
    return compiled


Needs = tuple[frozenset[str], frozenset[str]]   # variables a template needs, those of its subject


def check_templates(t: TemplateIn, settings: Settings,
                    prefix: str = "template.") -> tuple[Needs, dict[str, Needs]]:
    """check_template for the template and every language variant, each compiled once (errors
    name `template.variants.<tag>.<part>`), all together within TEMPLATE_MAX_TOTAL_NODES
    (checked after each variant: at most one variant's worth over); what the default needs,
    and each variant by tag."""
    default = _compile_checked(t, settings, prefix)
    total = default.nodes
    variants: dict[str, Needs] = {}
    for tag, variant in (t.variants or {}).items():
        compiled = _compile_checked(variant, settings, f"{prefix}variants.{tag}.")
        total += compiled.nodes
        if total > settings.template_max_total_nodes:
            field = f"{prefix}variants.{tag}"
            raise RequestRejected(
                400, "template_error", f"{field}: the template and its variants up to {tag} "
                f"have {total} elements, more than TEMPLATE_MAX_TOTAL_NODES "
                f"({settings.template_max_total_nodes}) together",
                [(field, f"over TEMPLATE_MAX_TOTAL_NODES ({total} elements so far)")])
        variants[tag] = compiled.required, compiled.subject_required
    return (default.required, default.subject_required), variants


@dataclass(frozen=True)
class Languages:
    """The variant each recipient of a request gets (issue 16), chosen once at POST."""
    needs: dict[str | None, Needs]        # by variant tag; None: the template's default
    chosen: list[tuple[str | None, str | None]]   # per request recipient: (locale, variant)

    @functools.cached_property
    def used(self) -> set[str | None]:
        """The variants some recipient gets (worked out once: a request has 100,000)."""
        return {variant for _, variant in self.chosen}

    def union(self, which: int) -> frozenset[str]:
        """What the variants in use need (which=0), or use in their subjects (1)."""
        return frozenset().union(*(self.needs[v][which] for v in self.used))


def recipient_variant(selector: VariantSelector, r: Recipient,
                      job_locale: str | None) -> tuple[str | None, str | None]:
    """(the locale asked for, the variant it gets) of one recipient: its own locale, else the
    job's; the variant by the locale's fallback chain (locales.py), None for the default."""
    locale = r.locale or job_locale
    return locale, selector.choose(locale)


def choose_languages(req: SendTemplateEmailsIn, default: Needs,
                     variants: dict[str, Needs]) -> Languages:
    """Each recipient's variant; `default` and `variants` from check_templates."""
    selector = VariantSelector(variants)
    needs: dict[str | None, Needs] = {None: default}
    needs.update(variants)
    return Languages(needs,
                     [recipient_variant(selector, r, req.locale) for r in req.recipients])


def stored_size(text: str | None) -> int:
    """Bytes `text` takes in an SQL statement: UTF-8, with the characters pymysql escapes
    counted twice."""
    if not text:
        return 0
    return len(text.encode("utf-8", "surrogatepass")) + sum(text.count(c) for c in
                                                            "\\'\"\0\n\r\x1a")


def _template_sizes(t: TemplateIn, prefix: str) -> dict[str, int]:
    sizes = {f"{prefix}{part}": stored_size(getattr(t, part))
             for part in ("subject", "html", "text")}
    for tag, variant in (t.variants or {}).items():
        sizes.update({f"{prefix}variants.{tag}.{part}": stored_size(getattr(variant, part))
                      for part in ("subject", "html", "text", "from_name")})
    return sizes


def check_stored_row(dao: Dao, parts: dict[str, int]) -> int:
    """Refuse (413, naming the largest field) a row whose statement would pass the server's
    max_allowed_packet; returns the room a statement has."""
    packet = dao.max_packet_bytes()
    room = packet - 64 * 1024   # the statement's own text and the other columns
    if sum(parts.values()) > room:
        field = max(parts, key=parts.__getitem__)
        raise RequestRejected(
            413, "payload_too_large", f"the template and variables take "
            f"{sum(parts.values())} bytes when stored, more than the database accepts in one "
            f"statement ({room} of max_allowed_packet {packet}); {field} is the largest",
            [(field, f"{parts[field]} bytes when stored")])
    return room


def check_template_storage(dao: Dao, t: TemplateIn) -> None:
    """A stored template's row fits in one statement (POST/PUT /api/templates)."""
    check_stored_row(dao, _template_sizes(t, ""))


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def dedupe(req: SendTemplateEmailsIn, languages: Languages | None = None) -> list[NewRecipient]:
    """First occurrence wins; addresses compare case-insensitively."""
    seen: set[str] = set()
    out: list[NewRecipient] = []
    for i, r in enumerate(req.recipients):
        folded = r.email.lower()
        if folded not in seen:
            seen.add(folded)
            locale, used = languages.chosen[i] if languages is not None else (None, None)
            out.append(NewRecipient(r.email, r.name, r.variables, locale=locale,
                                    locale_used=used, metadata=r.metadata))
    return out


def _unsubscribe_base(req: SendTemplateEmailsIn, base_url: str | None) -> str | None:
    """The job's one-click unsubscribe base URL (None: off). On by default when the server has
    UNSUBSCRIBE_BASE_URL; `"unsubscribe": false` turns it off, `true` needs the setting. (With
    it off, a template's {{ unsubscribe_url }} must be given as a variable: _Checks.)"""
    base = None if req.unsubscribe is False else (base_url or "").rstrip("/") or None
    if req.unsubscribe and base is None:
        raise RequestRejected(400, "validation_error", "unsubscribe: true needs the server's "
                              "UNSUBSCRIBE_BASE_URL, which is not set",
                              [("unsubscribe", "UNSUBSCRIBE_BASE_URL is not set")])
    return base


def _files(dao: Dao, key: ApiKey, req: SendTemplateEmailsIn, template: TemplateIn,
           settings: Settings) -> Prepared | None:
    """The job's and each recipient's files, checked (a RequestRejected names the field) and
    the small inline ones stored; None when the request has none."""
    from mailjobs.attachments.jobs import needs_files, prepare  # they use RequestRejected
    from mailjobs.attachments.store import MySQLStore

    if not needs_files(req):
        return None
    return prepare(dao, MySQLStore(dao, settings.attachment_chunk_bytes), key, req, template,
                   settings)


# --- the recipients: a chunk at a time ----------------------------------------------------------
# What goes wrong with recipients, in the order the answer reports it (the first kind found
# anywhere in the list wins, as when the whole list was checked by each check in turn).
SCHEMA, UNSUBSCRIBE, MISSING, SUBJECT, SIZE = range(5)


@dataclass
class _Errors:
    """Faults found so far, by kind; up to MAX_LISTED_ERRORS of each."""

    found: dict[int, list[tuple[str | None, str]]] = field(default_factory=dict)
    message: dict[int, str] = field(default_factory=dict)

    def add(self, kind: int, where: str | None, problem: str, message: str | None = None) -> None:
        listed = self.found.setdefault(kind, [])
        if len(listed) < MAX_LISTED_ERRORS:
            listed.append((where, problem))
            self.message.setdefault(kind, message or f"{where}: {problem}")

    def schema_full(self) -> bool:
        return len(self.found.get(SCHEMA, ())) >= MAX_LISTED_ERRORS

    def raise_first(self) -> None:
        if not self.found:
            return
        kind = min(self.found)
        listed, message = self.found[kind], self.message[kind]
        if kind in (UNSUBSCRIBE, MISSING):
            raise RequestRejected(400, "missing_variables", message, listed)
        if kind == SIZE:
            raise RequestRejected(413, "payload_too_large", message, listed)
        raise RequestRejected(400, "validation_error", message, listed)


@dataclass(frozen=True)
class _Checks:
    """What every recipient is checked against, from the job's own fields: by template variant
    (None: the template's default), the variables the job does not give."""

    selector: VariantSelector
    job_locale: str | None
    lacking: dict[str | None, tuple[frozenset[str], bool]]   # (needed, wants {{ name }})
    in_subject: dict[str | None, frozenset[str]]             # variables its subject uses
    unsubscribe_url_needed: dict[str | None, bool]   # used, no one-click, no job default
    several: bool                                    # the template has variants
    room: int | None                 # max bytes of one statement, when a row may come near it
    packet: int
    # each request recipient's own files, checked (attachments.jobs.prepare), by position;
    # None when no recipient has any (such bodies are validated whole: enqueue.split_body)
    files: list[list[dict[str, Any]] | None] | None = None


def stored_json(value: Any) -> str:
    """JSON text of a value parsed from a request (msgspec: ~10 times json.dumps' speed;
    compact, UTF-8), json.dumps for what msgspec does not encode (integers beyond 64 bits)."""
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, OverflowError, ValueError, msgspec.EncodeError):
        return json.dumps(value)


def check_recipient(r: Recipient, i: int, c: _Checks, errors: _Errors) -> RecipientRow:
    """Every check of one recipient beyond its schema (RecipientIn), and its stored row: the
    one place to extend when a recipient gets a new field."""
    where = f"recipients[{i}]"
    variables = r.variables or {}
    locale, variant = recipient_variant(c.selector, r, c.job_locale)
    if c.unsubscribe_url_needed[variant] and "unsubscribe_url" not in variables:
        errors.add(UNSUBSCRIBE, "unsubscribe", "off, and unsubscribe_url is not provided",
                   "the template uses {{ unsubscribe_url }} but this job has no one-click "
                   "unsubscribe (UNSUBSCRIBE_BASE_URL unset or \"unsubscribe\": false); turn it "
                   "on, or give unsubscribe_url as a variable")
    needed, wants_name = c.lacking[variant]
    if needed or wants_name:
        missing = sorted(needed - variables.keys()) if needed else []
        if wants_name and r.name is None and "name" not in variables:
            missing.append("name")
        if missing:
            of = (f" by template variant {variant}" if variant is not None else
                  " by the template's default" if c.several else "")
            errors.add(MISSING, f"{where}.variables",
                       f"template variable(s) not provided{of}: {', '.join(missing)}")
    for name in c.in_subject[variant] & variables.keys():
        for path, text in _strings(variables[name], f"{where}.variables.{name}"):
            problem = header_text_problem(text)
            if problem:
                errors.add(SUBJECT, path, f"used in template.subject: {problem} (header "
                                          "injection)")
                break
    stored = None
    if r.variables is not None:
        stored = stored_json(r.variables)
        # NaN and Infinity become null when encoded; only then is the walk needed
        if "null" in stored and not all_finite(r.variables):
            errors.add(SCHEMA, f"{where}.variables", "numbers must be finite (no NaN or "
                                                     "Infinity)")
    if c.room is not None and stored:
        size = stored_size(stored)
        if size > c.room // 2:
            errors.add(SIZE, f"{where}.variables", f"{size} bytes",
                       f"{where}.variables take {size} bytes when stored, more than one "
                       f"recipient may ({c.room // 2}: half of max_allowed_packet {c.packet} "
                       "less 64 KB)")
    metadata = stored_json(r.metadata) if r.metadata is not None else None
    own = c.files[i] if c.files is not None else None
    return r.email, r.name, stored, locale, variant, metadata, \
        json.dumps(own) if own else None


Chunk = tuple[int, Sequence[Recipient] | ValidationError]
ErrorsOf = Callable[[ValidationError], list[tuple[str | None, str]]]


class RecipientSource:
    """The request's recipients as chunks (index of the first, the validated recipients or the
    chunk's ValidationError), ready to be read again from the start (a rerun transaction)."""

    def __init__(self, count: int, chunks: Callable[[], Iterator[Chunk]],
                 errors_of: ErrorsOf) -> None:
        self.count = count
        self.chunks = chunks
        self.errors_of = errors_of

    @classmethod
    def parsed(cls, recipients: list[RecipientIn], errors_of: ErrorsOf) -> RecipientSource:
        """Recipients validated already with the whole body (the path for bodies the splitter
        does not take)."""
        size = defaults.ENQUEUE_CHUNK
        return cls(len(recipients), lambda: ((i, recipients[i:i + size])
                                             for i in range(0, len(recipients), size)), errors_of)

    @classmethod
    def raw(cls, raws: list[msgspec.Raw], errors_of: ErrorsOf,
            context: dict[str, Any]) -> RecipientSource:
        """Recipients as raw JSON slices of the body, validated a chunk at a time."""
        size = defaults.ENQUEUE_CHUNK
        context = {**context, "finite_checked_later": True}

        def chunks() -> Iterator[Chunk]:
            for start in range(0, len(raws), size):
                text = b"[" + b",".join(raws[start:start + size]) + b"]"
                try:
                    yield start, validate_recipients(text, context)
                except ValidationError as exc:
                    yield start, exc
        return cls(len(raws), chunks, errors_of)


_INDEX = re.compile(r"\[(\d+)\]")


def _rows(source: RecipientSource, checks: _Checks, errors: _Errors, counts: list[int],
          used: set[str | None]) -> Iterator[list[RecipientRow]]:
    """The de-duplicated rows to store, a chunk at a time, while no fault is found; after the
    first, the rest is still checked (the answer lists the first faults of the first kind) and
    nothing more is given to store. counts: [stored, duplicates] when it is exhausted; used:
    the template variants the recipients get."""
    seen: set[str] = set()
    stored = duplicates = 0
    for start, chunk in source.chunks():
        if isinstance(chunk, ValidationError):
            for where, problem in source.errors_of(chunk):
                if where is not None:   # "[k].email" within the chunk: its index in the list
                    m = _INDEX.match(where)
                    where = (f"recipients[{start + int(m[1])}]{where[m.end():]}" if m
                             else f"recipients.{where}")
                errors.add(SCHEMA, where, problem)
            if errors.schema_full():
                break
            continue
        rows = []
        for k, r in enumerate(chunk):
            row = check_recipient(r, start + k, checks, errors)
            used.add(row[4])
            folded = r.email.lower()      # first occurrence wins, case-insensitively
            if folded in seen:
                duplicates += 1
                continue
            seen.add(folded)
            rows.append(row)
        stored += len(rows)
        if not errors.found:   # after a fault: checked (for the answer's list), not stored
            yield rows
    counts[:] = [stored, duplicates]


_END = object()
# Threads that check the next chunk of a request while its own thread stores the current one;
# shared by the process's requests (a thread a request would leave each its own malloc arena).
_CHECKERS = ThreadPoolExecutor(4, thread_name_prefix="enqueue-check")


def _ahead(chunks: Iterator[list[RecipientRow]]) -> Iterator[list[RecipientRow]]:
    """The next chunk is checked by a helper thread while the caller stores this one (the
    database's work overlaps ours; one chunk ahead at most)."""
    pending = _CHECKERS.submit(next, chunks, _END)
    try:
        while True:
            chunk = pending.result()
            if chunk is _END:
                return
            pending = _CHECKERS.submit(next, chunks, _END)
            yield chunk   # type: ignore[misc]
    finally:   # stopped early (a database error): never two threads in `chunks` at once
        if not pending.cancel():
            pending.exception()


def enqueue(dao: Dao, key: ApiKey, req: SendTemplateEmailsIn, body_hash: str,
            idempotency_key: str | None, unsubscribe_base_url: str | None = None,
            settings: Settings | None = None, body_size: int = 0,
            recipients: RecipientSource | None = None,
            check_total: Callable[[int], None] | None = None,
            also: Also | None = None) -> Enqueued:
    """Validate what the schema cannot, then store the job in one transaction. Recipients on
    the key's suppression list are stored as `suppressed` (Dao.create_job). `recipients`: the
    request's recipients in chunks (default: req.recipients, validated already); each chunk is
    checked, de-duplicated and stored while the next is checked, all in one transaction that a
    fault anywhere rolls back. `check_total(n)`: called with the de-duplicated count before the
    commit (max_duration's estimate). `also`: what the storing transaction reads besides
    (the answer's estimate and warning), in Enqueued."""
    settings = settings or dao.settings
    if recipients is None:
        recipients = RecipientSource.parsed(req.recipients, lambda exc: [])
    if not key.may_send_as(req.sender_email):
        raise RequestRejected(403, "sender_not_allowed",
                              f"this API key may not send as {req.sender_email}",
                              [("sender_email", "not among the key's allowed senders")])
    if PRIORITIES[req.priority] > key.max_priority:
        raise RequestRejected(403, "priority_not_allowed",
                              f"this API key may not send at priority {req.priority} (at most "
                              f"{PRIORITY_NAMES[key.max_priority]})",
                              [("priority", "above the key's maximum priority")])
    template, version = resolve_template(dao, key, req)
    (required, in_subject), variants = check_templates(template, settings)
    needs: dict[str | None, Needs] = {None: (required, in_subject)}
    needs.update(variants)
    unsubscribe_base = _unsubscribe_base(req, unsubscribe_base_url)
    room = packet = None
    # No statement may pass the server's max_allowed_packet: it would drop the connection (a
    # 503 the client retries for ever). Checked only for bodies big enough to reach it.
    if 2 * body_size + 64 * 1024 >= dao.max_packet_bytes() or template.variants:
        packet = dao.max_packet_bytes()
        room = check_stored_row(dao, {"variables": stored_size(json.dumps(req.variables)),
                                      **_template_sizes(template, "template.")})
    # the job's and the recipients' files: a request with any is validated whole (split_body)
    files = _files(dao, key, req, template, settings)
    job_vars = req.variables.keys()
    checks = _Checks(
        selector=VariantSelector(variants), job_locale=req.locale,
        lacking={tag: (frozenset(need - BUILTIN_VARIABLES - job_vars),
                       "name" in need and "name" not in job_vars)
                 for tag, (need, _) in needs.items()},
        in_subject={tag: frozenset(subject) for tag, (_, subject) in needs.items()},
        unsubscribe_url_needed={tag: unsubscribe_base is None and "unsubscribe_url" in need
                                and "unsubscribe_url" not in job_vars
                                for tag, (need, _) in needs.items()},
        several=len(needs) > 1, room=room, packet=packet or 0,
        files=files.recipients if files is not None else None)
    send_at = req.send_at if req.send_at and req.send_at > datetime.now(UTC) else None

    def new_job(total: int, duplicates: int) -> NewJob:
        return NewJob(key.id, req.sender_email, req.from_name, req.reply_to, template.subject,
                      template.html, template.text, req.variables, total, duplicates,
                      idempotency_key, body_hash, send_at, req.template_name, version,
                      PRIORITIES[req.priority], req.expires_at,
                      unsubscribe_base_url=unsubscribe_base, metadata=req.metadata,
                      template_variants=variants_json(template),
                      attachments=files.job if files is not None else None,
                      attachment_ids=files.ids if files is not None else ())

    errors = _Errors()
    counts: list[int] = []
    used: set[str | None] = set()
    rows = _rows(recipients, checks, errors, counts, used)

    def finish() -> None:
        """After the last recipient: the job's own variables against the subjects of the
        variants in use (listed before the recipients'), then the first kind of fault."""
        subject = frozenset().union(*(needs[v][1] for v in used))
        found = []
        for name in sorted(subject & job_vars):
            for path, text in _strings(req.variables[name], f"variables.{name}"):
                problem = header_text_problem(text)
                if problem:
                    found.append((path, f"used in template.subject: {problem} (header "
                                        "injection)"))
                    break
        if found:
            listed = (found + errors.found.get(SUBJECT, []))[:MAX_LISTED_ERRORS]
            errors.found[SUBJECT] = listed
            errors.message[SUBJECT] = f"{listed[0][0]}: {listed[0][1]}"
        errors.raise_first()
        if check_total is not None:
            check_total(counts[0])

    one_chunk: list[RecipientRow] | None = None
    if recipients.count <= defaults.INSERT_BATCH:
        # up to one INSERT's worth: checked whole before the transaction, so its totals are
        # known (the fewest round trips: a far database pays each)
        one_chunk = [row for c in rows for row in c]
        finish()

    def checked() -> Iterator[list[RecipientRow]]:
        # stored INSERT_BATCH rows a statement (a row is a few strings; the recipients' objects
        # are gone with their chunk): a far database pays a round trip a statement
        batch: list[RecipientRow] = []
        for chunk in _ahead(rows):
            batch += chunk
            if len(batch) >= defaults.INSERT_BATCH:
                yield from deadline(batch)
                batch = []
        yield from deadline(batch)
        finish()   # inside the transaction: a fault rolls it back

    def deadline(batch: list[RecipientRow]) -> Iterator[list[RecipientRow]]:
        # each statement gets the whole request deadline (as the one transaction of a smaller
        # job does): the chunks' checks are CPU work bounded by the body's size budgets; a
        # database that stops answering still fails within one deadline
        if batch:
            if db_guard.remaining() is not None:
                db_guard.start_deadline(settings.db_request_deadline)
            yield batch

    def check_sender(rows: list[Any]) -> None:
        """sender_email must be the account or a verified alias (send_as.py); read in the
        storing transaction, so the check costs no round trip of its own."""
        allowed = send_as.refusal(dao, req.sender_email, key.may_send_as, rows)
        if allowed is not None:
            raise RequestRejected(
                400, "sender_not_verified", f"{req.sender_email} is not the sender's Gmail "
                "account nor one of its verified send-as aliases; allowed: "
                f"{', '.join(allowed) or '(none this key may use)'}",
                [("sender_email", "not a verified send-as address of the account")],
                {"allowed": allowed})

    def store() -> StoredJob:
        if one_chunk is not None:
            return dao.create_job_read(new_job(*counts), one_chunk, check_sender, also)
        return dao.create_job_chunks(new_job(0, 0), checked(), lambda: (counts[0], counts[1]),
                                     check_sender, also)

    # The request's deadline bounds its database waits; the checks above are CPU work bounded by
    # the body's size budgets (MAX_REQUEST_BYTES, MAX_RECIPIENTS_PER_JOB), which on a busy host
    # took most of the 10 s of a 100,000-recipient POST before its one storing transaction
    # began (a 503 for a job the database would have stored in a second). That transaction
    # gets the whole deadline.
    if db_guard.remaining() is not None:     # within a request (a deadline is running)
        db_guard.start_deadline(settings.db_request_deadline)
    try:
        stored = store()
    except AttachmentGone as exc:
        raise RequestRejected(409, "attachment_deleted", f"an attachment was deleted while the "
                              f"job was being stored ({exc}); nothing was stored",
                              [("attachments", "deleted meanwhile")]) from None
    except DuplicateKey:
        # Another request with the same Idempotency-Key won the race: answer as a replay.
        replay = replay_or_conflict(dao, key, idempotency_key or "", body_hash)
        if replay is None:
            raise
        return replay
    return Enqueued(stored.job, replayed=False, suppressed=stored.suppressed, plan=stored.plan,
                    live_runners=stored.live_runners)


def variants_json(t: TemplateIn) -> dict[str, dict[str, Any]] | None:
    """A template's variants as stored (templates.variants, jobs.template_variants)."""
    if not t.variants:
        return None
    return {tag: v.model_dump(exclude_none=True) for tag, v in t.variants.items()}


def replay_or_conflict(dao: Dao, key: ApiKey, idempotency_key: str,
                       body_hash: str) -> Enqueued | None:
    """The first answer for a known Idempotency-Key, 422 if the body differs, None if new."""
    job = dao.job_by_idempotency_key(key.id, idempotency_key)
    if job is None:
        return None
    if job.request_hash != body_hash:
        raise RequestRejected(
            422, "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
            [("Idempotency-Key", f"already used for job {job.id} with another body")])
    return Enqueued(job, replayed=True)
