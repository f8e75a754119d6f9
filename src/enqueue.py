"""Turning a validated send request into a stored job: the checks no schema can make
(templates compile, every recipient has every variable), de-duplication, idempotency."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from dataclasses import dataclass

from api_schemas import SendTemplateEmailsIn, TemplateIn
from dao_mysql import Dao, DuplicateKey
from records import ApiKey, Job, NewJob, NewRecipient
from scheduling import PRIORITIES, PRIORITY_NAMES
from templating import BUILTIN_VARIABLES, TemplateCompileError, compile_templates

MAX_LISTED_ERRORS = 20


class RequestRejected(Exception):
    """A 4xx answer: status, machine code, sentence, and the fields at fault."""

    def __init__(self, status: int, code: str, message: str,
                 errors: list[tuple[str | None, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []

    @property
    def field(self) -> str | None:
        return self.errors[0][0] if self.errors else None


@dataclass(frozen=True)
class Enqueued:
    job: Job
    replayed: bool


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
    return TemplateIn(subject=stored.subject, html=stored.html, text=stored.text), stored.version


def check_template(t: TemplateIn, prefix: str = "template.") -> frozenset[str]:
    """Compile the template; returns the variables it needs, or raises a 400."""
    try:
        compiled = compile_templates(t.subject, t.html, t.text)
    except TemplateCompileError as exc:
        raise RequestRejected(400, "template_error", f"{prefix}{exc.part} does not compile: {exc}",
                              [(f"{prefix}{exc.part}", str(exc))]) from None
    return compiled.required


def _missing_variables(req: SendTemplateEmailsIn, required: frozenset[str]) -> None:
    needed = required - BUILTIN_VARIABLES - req.variables.keys()
    wants_name = "name" in required and "name" not in req.variables
    if not needed and not wants_name:
        return
    errors: list[tuple[str | None, str]] = []
    for i, r in enumerate(req.recipients):
        have = r.variables.keys() if r.variables else ()
        missing = sorted(v for v in needed if v not in have)
        if wants_name and r.name is None and "name" not in have:
            missing.append("name")
        if missing:
            errors.append((f"recipients[{i}].variables",
                           f"template variable(s) not provided: {', '.join(missing)}"))
            if len(errors) >= MAX_LISTED_ERRORS:
                break
    if errors:
        raise RequestRejected(400, "missing_variables",
                              f"{errors[0][0]}: {errors[0][1]}", errors)


def dedupe(req: SendTemplateEmailsIn) -> list[NewRecipient]:
    """First occurrence wins; addresses compare case-insensitively."""
    seen: set[str] = set()
    out: list[NewRecipient] = []
    for r in req.recipients:
        folded = r.email.lower()
        if folded not in seen:
            seen.add(folded)
            out.append(NewRecipient(r.email, r.name, r.variables))
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


def enqueue(dao: Dao, key: ApiKey, req: SendTemplateEmailsIn, body_hash: str,
            idempotency_key: str | None, unsubscribe_base_url: str | None = None) -> Enqueued:
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
    required = check_template(template)
    unsubscribe_base = _unsubscribe_base(req, unsubscribe_base_url, required)
    _missing_variables(req, required)
    recipients = dedupe(req)
    new = NewJob(key.id, req.sender_email, req.from_name, req.reply_to, template.subject,
                 template.html, template.text, req.variables, len(recipients),
                 len(req.recipients) - len(recipients), idempotency_key, body_hash,
                 req.send_at if req.send_at and req.send_at > datetime.now(timezone.utc) else None,
                 req.template_name, version, PRIORITIES[req.priority], req.expires_at,
                 unsubscribe_base_url=unsubscribe_base)
    try:
        job_id = dao.create_job(new, recipients)
    except DuplicateKey:
        # Another request with the same Idempotency-Key won the race: answer as a replay.
        replay = replay_or_conflict(dao, key, idempotency_key or "", body_hash)
        if replay is None:
            raise
        return replay
    job = dao.job(job_id)
    assert job is not None
    return Enqueued(job, replayed=False)


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
            [("Idempotency-Key", "already used for job %d with another body" % job.id)])
    return Enqueued(job, replayed=True)
