"""Turning a validated send request into a stored job: the checks no schema can make
(templates compile, every recipient has every variable), de-duplication, idempotency."""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mailjobs.dao_mysql import AttachmentGone, Dao, DuplicateKey
from mailjobs.db import guard as db_guard
from mailjobs.locales import VariantSelector
from mailjobs.mail_message import header_text_problem
from mailjobs.records import ApiKey, Job, NewJob, NewRecipient
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
from mailjobs.web.schemas import RecipientIn, SendTemplateEmailsIn, TemplateIn, TemplatePartsIn

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


def recipient_variant(selector: VariantSelector, r: RecipientIn,
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


def _check_stored_sizes(dao: Dao, req: SendTemplateEmailsIn, template: TemplateIn,
                        body_size: int) -> None:
    """No statement may pass the server's max_allowed_packet: it would drop the connection
    (a 503 the client retries for ever). Checked only for bodies big enough to reach it."""
    packet = dao.max_packet_bytes()
    if 2 * body_size + 64 * 1024 < packet and not template.variants:
        return
    room = check_stored_row(dao, {"variables": stored_size(json.dumps(req.variables)),
                                  **_template_sizes(template, "template.")})
    for i, r in enumerate(req.recipients):
        size = stored_size(json.dumps(r.variables)) if r.variables else 0
        if size > room // 2:
            raise RequestRejected(
                413, "payload_too_large", f"recipients[{i}].variables take {size} bytes when "
                f"stored, more than one recipient may ({room // 2}: half of max_allowed_packet "
                f"{packet} less 64 KB)", [(f"recipients[{i}].variables", f"{size} bytes")])


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


def _subject_variables(req: SendTemplateEmailsIn, used: frozenset[str]) -> None:
    """A variable the subject uses must not put a line break or NUL in the Subject header: the
    sender would refuse every such message (header_injection)."""
    sources = [("variables", req.variables)] + [
        (f"recipients[{i}].variables", r.variables or {}) for i, r in enumerate(req.recipients)]
    errors: list[tuple[str | None, str]] = []
    for prefix, variables in sources:
        for name in used & variables.keys():
            for path, text in _strings(variables[name], f"{prefix}.{name}"):
                problem = header_text_problem(text)
                if problem:
                    errors.append((path, f"used in template.subject: {problem} (header "
                                         "injection)"))
                    break
        if len(errors) >= MAX_LISTED_ERRORS:
            break
    if errors:
        raise RequestRejected(400, "validation_error", f"{errors[0][0]}: {errors[0][1]}", errors)


def _missing_variables(req: SendTemplateEmailsIn, required: frozenset[str],
                       languages: Languages | None = None) -> None:
    """Every recipient has every variable of the template (with languages: of the variant
    chosen for it), from the job's variables or its own."""
    needs = {None: required} if languages is None else \
        {tag: need[0] for tag, need in languages.needs.items() if tag in languages.used}
    lacking = {tag: (need - BUILTIN_VARIABLES - req.variables.keys(),
                     "name" in need and "name" not in req.variables)
               for tag, need in needs.items()}
    if not any(needed or wants_name for needed, wants_name in lacking.values()):
        return
    errors: list[tuple[str | None, str]] = []
    for i, r in enumerate(req.recipients):
        tag = languages.chosen[i][1] if languages is not None else None
        needed, wants_name = lacking[tag]
        have = r.variables.keys() if r.variables else ()
        missing = sorted(v for v in needed if v not in have)
        if wants_name and r.name is None and "name" not in have:
            missing.append("name")
        if missing:
            of = f" by template variant {tag}" if tag is not None else (
                " by the template's default" if languages is not None and len(needs) > 1
                else "")
            errors.append((f"recipients[{i}].variables",
                           f"template variable(s) not provided{of}: {', '.join(missing)}"))
            if len(errors) >= MAX_LISTED_ERRORS:
                break
    if errors:
        raise RequestRejected(400, "missing_variables",
                              f"{errors[0][0]}: {errors[0][1]}", errors)


def dedupe(req: SendTemplateEmailsIn, languages: Languages | None = None,
           files: list[list[dict[str, Any]] | None] | None = None) -> list[NewRecipient]:
    """First occurrence wins; addresses compare case-insensitively. `files`: each request
    recipient's own attachments (attachments.jobs.prepare), by position."""
    seen: set[str] = set()
    out: list[NewRecipient] = []
    for i, r in enumerate(req.recipients):
        folded = r.email.lower()
        if folded not in seen:
            seen.add(folded)
            locale, used = languages.chosen[i] if languages is not None else (None, None)
            out.append(NewRecipient(r.email, r.name, r.variables, locale=locale,
                                    locale_used=used, metadata=r.metadata,
                                    attachments=files[i] if files is not None else None))
    return out


def _unsubscribe_base(req: SendTemplateEmailsIn, base_url: str | None,
                      required: frozenset[str]) -> str | None:
    """The job's one-click unsubscribe base URL (None: off). On by default when the server has
    UNSUBSCRIBE_BASE_URL; `"unsubscribe": false` turns it off, `true` needs the setting. With it
    off, a template's {{ unsubscribe_url }} must be provided as a variable (the client's own
    link), or the request is refused: a mail must never say "unsubscribe: " and no link."""
    base = None if req.unsubscribe is False else (base_url or "").rstrip("/") or None
    if req.unsubscribe and base is None:
        raise RequestRejected(400, "validation_error", "unsubscribe: true needs the server's "
                              "UNSUBSCRIBE_BASE_URL, which is not set",
                              [("unsubscribe", "UNSUBSCRIBE_BASE_URL is not set")])
    if base is None and "unsubscribe_url" in required and "unsubscribe_url" not in req.variables \
            and any("unsubscribe_url" not in (r.variables or {}) for r in req.recipients):
        raise RequestRejected(
            400, "missing_variables", "the template uses {{ unsubscribe_url }} but this job has "
            "no one-click unsubscribe (UNSUBSCRIBE_BASE_URL unset or \"unsubscribe\": false); "
            "turn it on, or give unsubscribe_url as a variable",
            [("unsubscribe", "off, and unsubscribe_url is not provided")])
    return base


def _files(dao: Dao, key: ApiKey, req: SendTemplateEmailsIn, template: TemplateIn,
           settings: Settings) -> Prepared:
    """The job's and each recipient's files, checked (a RequestRejected names the field) and
    the small inline ones stored."""
    from mailjobs.attachments.jobs import prepare  # it uses RequestRejected from here
    from mailjobs.attachments.store import MySQLStore

    return prepare(dao, MySQLStore(dao, settings.attachment_chunk_bytes), key, req, template,
                   settings)


def enqueue(dao: Dao, key: ApiKey, req: SendTemplateEmailsIn, body_hash: str,
            idempotency_key: str | None, unsubscribe_base_url: str | None = None,
            settings: Settings | None = None, body_size: int = 0) -> Enqueued:
    """Validate what the schema cannot, then store the job in one transaction. Recipients on
    the key's suppression list are stored as `suppressed` (Dao.create_job)."""
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
    (required, in_subject), variants = check_templates(template, settings or dao.settings)
    languages = choose_languages(req, (required, in_subject), variants)
    unsubscribe_base = _unsubscribe_base(req, unsubscribe_base_url, languages.union(0))
    _missing_variables(req, required, languages)
    _subject_variables(req, languages.union(1))
    _check_stored_sizes(dao, req, template, body_size)
    files = _files(dao, key, req, template, settings or dao.settings)
    recipients = dedupe(req, languages, files.recipients)
    new = NewJob(key.id, req.sender_email, req.from_name, req.reply_to, template.subject,
                 template.html, template.text, req.variables, len(recipients),
                 len(req.recipients) - len(recipients), idempotency_key, body_hash,
                 req.send_at if req.send_at and req.send_at > datetime.now(UTC) else None,
                 req.template_name, version, PRIORITIES[req.priority], req.expires_at,
                 unsubscribe_base_url=unsubscribe_base, metadata=req.metadata,
                 template_variants=variants_json(template),
                 attachments=files.job, attachment_ids=files.ids)
    # The request's deadline bounds its database waits; the checks above are CPU work bounded by
    # the body's size budgets (MAX_REQUEST_BYTES, MAX_RECIPIENTS_PER_JOB), which on a busy host
    # took most of the 10 s of a 100,000-recipient POST before its one storing transaction
    # began (a 503 for a job the database would have stored in a second). That transaction
    # gets the whole deadline.
    if db_guard.remaining() is not None:     # within a request (a deadline is running)
        db_guard.start_deadline((settings or dao.settings).db_request_deadline)

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

    try:
        job, suppressed = dao.create_job_read(new, recipients, check_sender)
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
    return Enqueued(job, replayed=False, suppressed=suppressed)


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
