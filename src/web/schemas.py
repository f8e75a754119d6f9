"""Request and response models of the HTTP API (pydantic).

The same models validate requests and generate `/openapi.json`, so the document cannot drift
from what the server accepts.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mailjobs.deliverability.addresses import InvalidAddress, normalize_address
from mailjobs.locales import MAX_TAG_CHARS, MAX_VARIANTS, InvalidLocale, canonical
from mailjobs.mail_message import header_text_problem
from mailjobs.records import JOB_STATUSES, RECIPIENT_STATUSES


def _address(value: str) -> str:
    try:
        return normalize_address(value.strip())
    except InvalidAddress as exc:
        raise ValueError(f"not a valid email address: {exc}") from None


def _mailbox(value: str) -> str:
    """An address mailjobs can send to or from: its local part must be ASCII (a non-ASCII one,
    josé@example.com, needs SMTPUTF8, which neither the Gmail API path nor the SMTP transport
    here sends; refused at POST rather than failing every send)."""
    local = value.rpartition("@")[0]
    if not local.isascii():
        raise ValueError(f"{value!r} has a non-ASCII local part, which needs SMTPUTF8; mailjobs "
                         "does not send it (non-ASCII domains are fine)")
    problem = header_text_problem(value)
    if problem:
        raise ValueError(f"{problem} (header injection)")
    return value


def _one_line(value: str | None) -> str | None:
    problem = header_text_problem(value)
    if problem:
        raise ValueError(f"must not contain CR, LF, any other line break or NUL (header "
                         f"injection): {problem}")
    return value


Address = Annotated[str, Field(max_length=320), AfterValidator(_address)]
# An address a message is sent to or from (or Reply-To).
Mailbox = Annotated[str, Field(max_length=320), AfterValidator(_address),
                    AfterValidator(_mailbox)]
HeaderText = Annotated[str, Field(max_length=255), AfterValidator(_one_line)]


def _locale(value: str) -> str:
    try:
        return canonical(value)
    except InvalidLocale as exc:
        raise ValueError(str(exc)) from None


# A BCP 47 language tag, stored in canonical casing (zh_hant_tw -> zh-Hant-TW).
LocaleTag = Annotated[str, Field(min_length=1, max_length=MAX_TAG_CHARS,
                                 description="a BCP 47 language tag: en, pt-BR, zh-TW, zh-Hant "
                                             "(case-insensitive; _ or -)"),
                      AfterValidator(_locale)]


def _finite(value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    if (info.context or {}).get("finite_checked_later"):   # the streaming enqueue's recipients:
        return value                                       # enqueue.check_recipient checks
    return _finite_dict(value)


def _finite_dict(value: dict[str, Any]) -> dict[str, Any]:
    if not all_finite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    return value


def all_finite(value: Any) -> bool:
    """No NaN or Infinity anywhere in parsed JSON (a walk: serialising every recipient's
    variables to find out was a quarter of the validation of a 10,000-recipient job)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    return True


def _utc_in_range(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("date is out of range") from None


Variables = Annotated[dict[str, Any], AfterValidator(_finite)]


METADATA_MAX_BYTES = 4096   # a job's metadata, as JSON


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class TemplatePartsIn(Strict):
    """A subject with an html and/or text body: a template, or one language's variant of it."""

    subject: Annotated[str, Field(min_length=1, max_length=998), AfterValidator(_one_line)]
    html: str | None = Field(default=None, description="at most TEMPLATE_MAX_BYTES bytes "
                             "(UTF-8); larger is 413")
    text: str | None = Field(default=None, description="at most TEMPLATE_MAX_BYTES bytes "
                             "(UTF-8); larger is 413")

    @model_validator(mode="after")
    def _has_body(self) -> TemplatePartsIn:
        if self.html is None and self.text is None:
            raise ValueError("give at least one of html and text")
        return self


class TemplateVariantIn(TemplatePartsIn):
    """One language's version of a template: complete on its own (nothing is taken from the
    default, so a message is never half in another language)."""

    from_name: HeaderText | None = Field(
        default=None, description="the From name for this language (default: the job's "
                                  "from_name)")


class TemplateIn(TemplatePartsIn):
    variants: dict[str, TemplateVariantIn] | None = Field(
        default=None, description="versions by BCP 47 language tag ({\"zh-Hant\": {...}, \"pt\": "
        "{...}}); each recipient gets the one its locale's fallback chain reaches first, else "
        f"this template's own subject/html/text; at most {MAX_VARIANTS}")

    @field_validator("variants", mode="before")
    @classmethod
    def _variant_keys(cls, value: Any) -> Any:
        """Keys in canonical casing; refused: a key that is no language tag, two keys for one
        tag (zh_TW and zh-tw), more than MAX_VARIANTS."""
        if not isinstance(value, dict):
            return value
        if len(value) > MAX_VARIANTS:
            raise ValueError(f"at most {MAX_VARIANTS} variants, got {len(value)}")
        out: dict[str, Any] = {}
        for key, variant in value.items():
            try:
                tag = canonical(key)
            except InvalidLocale as exc:
                raise ValueError(f"variant key {key!r}: {exc}") from None
            if tag in out:
                raise ValueError(f"two variants for {tag} (keys compare case-insensitively, _ "
                                 "as -)")
            out[tag] = variant
        return out


TemplateName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")]


class StoredTemplateIn(TemplateIn):
    """Body of POST /api/templates."""

    name: TemplateName


class TemplateVariantOut(BaseModel):
    subject: str
    html: str | None = None
    text: str | None = None
    from_name: str | None = None


class TemplateOut(BaseModel):
    name: str
    version: int
    subject: str
    html: str | None
    text: str | None
    variants: dict[str, TemplateVariantOut] | None = Field(
        default=None, description="versions by language tag (canonical casing)")
    created_at: datetime


class TemplatesOut(BaseModel):
    templates: list[TemplateOut]


class TemplateVersionsOut(BaseModel):
    name: str
    versions: list[TemplateOut] = Field(description="newest first")


MAX_ATTACHMENTS = 50   # files in one message (the job's and the recipient's together)


class AttachmentRefIn(Strict):
    """A file in a job: an uploaded one (`id`) or a small one inline (`content_base64`)."""

    id: Annotated[str, Field(max_length=40, pattern=r"^att_[0-9a-f]{1,36}$")] | None = Field(
        default=None, description="an id from POST /api/attachments")
    filename: Annotated[str, Field(min_length=1, max_length=255),
                        AfterValidator(_one_line)] | None = Field(
        default=None, description="the name the recipient sees; may use the recipient's "
                                  "variables ({{ code }}); default: the upload's ?filename=")
    content_type: Annotated[str, Field(max_length=255,
                                       pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$"
                                       )] | None = Field(
        default=None, description="default: the upload's, or guessed from the filename")
    content_base64: str | None = Field(
        default=None, description="a small file inline (base64); all of a job's together at "
                                  "most ATTACHMENT_INLINE_MAX_BYTES decoded")
    inline: bool = Field(default=False, description="an inline image, shown where the HTML "
                                                    "says <img src=\"cid:CID\">")
    cid: Annotated[str, Field(min_length=1, max_length=100,
                              pattern=r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]+$")] | None = Field(
        default=None, description="with inline: the Content-ID the HTML refers to")

    @model_validator(mode="after")
    def _one_source(self) -> AttachmentRefIn:
        if (self.id is None) == (self.content_base64 is None):
            raise ValueError("give exactly one of id and content_base64")
        if self.content_base64 is not None and self.filename is None:
            raise ValueError("a file given inline (content_base64) needs a filename")
        if self.inline and self.cid is None:
            raise ValueError("an inline image needs a cid (referred to as cid:<cid>)")
        if self.cid is not None and not self.inline:
            raise ValueError("cid is for inline images: add \"inline\": true")
        return self


Attachments = Annotated[list[AttachmentRefIn], Field(max_length=MAX_ATTACHMENTS)]


def _metadata(value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
    """A client's metadata object: at most METADATA_MAX_BYTES as JSON (the request's
    context carries the setting)."""
    limit = (info.context or {}).get("metadata_max_bytes", METADATA_MAX_BYTES)
    if value is not None and len(json.dumps(value).encode()) > limit:
        raise ValueError(f"at most {limit} bytes as JSON (METADATA_MAX_BYTES)")
    return value


Metadata = Annotated[dict[str, Any] | None, AfterValidator(_metadata)]


class RecipientIn(Strict):
    email: Mailbox
    name: HeaderText | None = None
    variables: Variables | None = None
    locale: LocaleTag | None = Field(default=None, description="the recipient's language: "
                                     "chooses the template's variant (default: the job's locale)")
    metadata: Metadata = Field(default=None, description="a free JSON object (your own ids), "
                               "returned in the recipient's listings, export and webhook events")
    attachments: Attachments | None = Field(
        default=None, description="this recipient's own files (besides the job's)")


# A chunk of recipients, validated on its own (the streaming enqueue: src/enqueue.py).
RECIPIENT_LIST: TypeAdapter[list[RecipientIn]] = TypeAdapter(list[RecipientIn])


class PlainRecipient(msgspec.Struct, forbid_unknown_fields=True):
    """RecipientIn's fields for msgspec's decoder (validate_recipients), and what it gives once
    they passed RecipientIn's checks: a struct, not a pydantic model (model_construct took
    ~15 µs a recipient, the most of a 10,000-recipient POST's validation)."""

    email: str
    name: str | None = None
    variables: dict[str, Any] | None = None
    locale: str | None = None
    metadata: dict[str, Any] | None = None
    attachments: None = None   # a recipient with files goes to pydantic (and the whole body)

    def model_dump(self) -> dict[str, Any]:
        """As RecipientIn.model_dump() gives it."""
        return {f: getattr(self, f) for f in _PLAIN_FIELDS}


# A recipient as the enqueue path reads it: validated by pydantic or by validate_recipients.
Recipient = RecipientIn | PlainRecipient


# RecipientIn's fields; `attachments` is not decoded here (an unknown field: such a chunk goes
# to pydantic), and split_body sends a body that names it down the whole-body path anyway
_PLAIN_FIELDS = ("email", "name", "variables", "locale", "metadata", "attachments")
_PLAIN_DECODER = msgspec.json.Decoder(list[PlainRecipient])


def validate_recipients(text: bytes, context: dict[str, Any]) -> Sequence[Recipient]:
    """RECIPIENT_LIST.validate_json(text) (a JSON array of recipients), a few times faster for
    the usual chunk: decoded by msgspec and put through RecipientIn's own checks; any chunk this
    path does not take whole (an unknown field, a wrong type, a check that fails, a field
    added to RecipientIn and not to PlainRecipient) is validated by pydantic, whose answer
    (or exception) it returns. tests/test_enqueue_properties.py holds the two to the same
    results."""
    if tuple(RecipientIn.model_fields) == _PLAIN_FIELDS:
        try:
            plain = _PLAIN_DECODER.decode(text)
            limit = context.get("metadata_max_bytes", METADATA_MAX_BYTES)
            finite_later = context.get("finite_checked_later")
            for r in plain:
                if len(r.email) > 320 or (r.name is not None and len(r.name) > 255) or (
                        r.locale is not None and not 1 <= len(r.locale) <= MAX_TAG_CHARS) or (
                        r.metadata is not None
                        and len(json.dumps(r.metadata).encode()) > limit):
                    break
                r.email = _mailbox(_address(r.email))
                if r.name is not None:
                    _one_line(r.name)
                if r.variables is not None and not finite_later:
                    r.variables = _finite_dict(r.variables)
                if r.locale is not None:
                    r.locale = _locale(r.locale)
            else:
                return plain
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            pass
    return RECIPIENT_LIST.validate_json(text, context=context)


class SendTemplateEmailsIn(Strict):
    """Body of POST /api/jobs/send_template_emails."""

    sender_email: Mailbox
    from_name: HeaderText | None = None
    reply_to: Mailbox | None = None
    template: TemplateIn | None = Field(default=None, description="inline template; or give "
                                        "template_name")
    template_name: TemplateName | None = Field(default=None, description="a stored template")
    template_version: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="with template_name: this version (default: the newest)")
    variables: Variables = Field(default_factory=dict)
    locale: LocaleTag | None = Field(default=None, description="the language of recipients "
                                     "that give no locale of their own")
    recipients: list[RecipientIn]
    send_at: Annotated[AwareDatetime | None, AfterValidator(_utc_in_range)] = Field(
        default=None, description="ISO 8601 with an offset; the job waits as 'scheduled' until "
                                  "then (a time in the past starts at once)")
    expires_at: Annotated[AwareDatetime | None, AfterValidator(_utc_in_range)] = Field(
        default=None, description="ISO 8601 with an offset; recipients not sent by then end "
                                  "'expired', never sent late")
    priority: Literal["high", "normal", "low"] = Field(
        default="normal", description="higher priority work is always claimed first")
    unsubscribe: bool | None = Field(
        default=None, description="one-click unsubscribe (List-Unsubscribe, RFC 8058) in every "
                                  "message; default: on when the server has "
                                  "UNSUBSCRIBE_BASE_URL; true without it is refused")
    attachments: Attachments | None = Field(
        default=None, description="files every recipient gets (uploaded ids, or small ones "
                                  "inline); each recipient may have its own too")
    metadata: Metadata = Field(
        default=None, description="a free JSON object (your own ids), returned by GET "
                                  "/api/jobs/{id} and in every webhook event of the job; at most "
                                  "METADATA_MAX_BYTES bytes as JSON")

    max_duration: timedelta | None = Field(
        default=None, description="refuse the job (400 cannot_finish_in_time) when its estimate "
                                  "says it cannot finish within this: seconds (a number) or an "
                                  "ISO 8601 duration such as \"P3D\" or \"PT12H\"")

    @field_validator("max_duration")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value.total_seconds() <= 0:
            raise ValueError("max_duration must be more than 0 seconds")
        return value

    @field_validator("recipients", mode="before")
    @classmethod
    def _count(cls, value: Any, info: ValidationInfo) -> Any:
        context = info.context or {}
        limit = context.get("max_recipients", 100_000)
        # the streaming enqueue validates the job's own fields with `recipients` left out (an
        # empty list) and gives their count here; they are validated a chunk at a time
        count = context.get("recipients_count")
        if isinstance(value, list):
            n = len(value) if count is None else count
            if not n:
                raise ValueError("give at least one recipient")
            if n > limit:
                raise ValueError(f"at most {limit} recipients per job, got {n}; "
                                 "split the list into several jobs")
        return value

    @model_validator(mode="after")
    def _one_template(self) -> SendTemplateEmailsIn:
        if (self.template is None) == (self.template_name is None):
            raise ValueError("give either template or template_name")
        if self.template_version is not None and self.template_name is None:
            raise ValueError("template_version goes with template_name")
        if self.expires_at is not None:
            if self.expires_at <= datetime.now(UTC):
                raise ValueError("expires_at is in the past")
            if self.send_at is not None and self.expires_at <= self.send_at:
                raise ValueError("expires_at must be after send_at")
        return self


class RetryIn(Strict):
    """Body of POST /api/jobs/{id}/retry (optional): which recipients to send again."""

    status: list[Literal["failed", "in_doubt", "cancelled"]] = Field(
        default_factory=lambda: ["failed", "in_doubt"], min_length=1)  # type: ignore[arg-type]
    error_code: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, description="only recipients with one of these error codes")


class ErrorSummary(BaseModel):
    error_code: str
    count: int
    example: str | None


class ErrorItem(BaseModel):
    field: str | None
    message: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: str = Field(description="stable machine code, e.g. validation_error")
    message: str = Field(description="one sentence for a person")
    field: str | None = Field(default=None, description="the first field at fault")
    errors: list[ErrorItem] | None = Field(default=None, description="up to 20 fields at fault")
    allowed: list[str] | None = Field(default=None, description="sender_not_verified: the "
                                      "verified send-as addresses this key may use")


class EstimateOut(BaseModel):
    """When the job should finish, from its sender's limits and what is queued for it."""

    finishes_at: datetime = Field(description="when the last send should go")
    limited_by: Literal["daily_cap", "rate", "none"] = Field(
        description="what sets the pace: the sender's rolling 24 h cap, its per-minute rate, or "
                    "nothing (no limits: as fast as the runners go)")
    seconds: int = Field(description="from starts_at to finishes_at")
    days: float
    recipients: int = Field(description="this job's sends still to go")
    queued_ahead: int = Field(description="unsent recipients of the sender's other queued, "
                                          "scheduled and running jobs, counted first")
    rate_per_minute: int = Field(description="the sender's rate (0: unlimited)")
    daily_cap: int = Field(description="the sender's rolling 24 h cap (0: unlimited)")
    sent_24h: int = Field(description="the sender's sends in the last 24 h")
    starts_at: datetime = Field(description="now, or the job's send_at")


class EnqueueOut(BaseModel):
    job_id: int
    status: str
    recipients: int
    duplicates_removed: int
    suppressed: int = Field(default=0, description="recipients stored as 'suppressed' (on the "
                                                   "key's suppression list), never sent")
    status_url: str
    warnings: list[str] = Field(default_factory=list)
    estimate: EstimateOut | None = Field(default=None, description="when it should finish")
    test: bool = Field(default=False, description="a test key's job: nothing reaches a real "
                                                  "transport")


class JobAttachmentOut(BaseModel):
    id: str | None = Field(description="the attachment's id (att_...)")
    filename: str = Field(description="as given: a template when it uses variables")
    content_type: str
    size: int
    cid: str | None = Field(default=None, description="an inline image's Content-ID")


class JobOut(BaseModel):
    id: int
    type: str
    status: str = Field(description="one of " + ", ".join(JOB_STATUSES))
    status_reason: str | None
    sender_email: str
    from_name: str | None
    reply_to: str | None
    total: int
    duplicates_removed: int
    priority: str = Field(default="normal", description="high, normal or low")
    expires_at: datetime | None = Field(default=None, description="unsent recipients expire then")
    template_name: str | None = Field(default=None, description="the stored template used")
    template_version: int | None = Field(default=None, description="its exact version")
    counts: dict[str, int] = Field(description="recipients by status: "
                                   + ", ".join(RECIPIENT_STATUSES))
    created_at: datetime
    send_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    recipients_url: str
    errors: list[ErrorSummary] | None = Field(
        default=None, description="unsent recipients by error_code, with one example message "
                                  "(on single-job answers)")
    estimate: EstimateOut | None = Field(
        default=None, description="when an unfinished job should finish (on single-job answers)")
    test: bool = Field(default=False, description="a test key's job: nothing reaches a real "
                                                  "transport")
    metadata: dict[str, Any] | None = Field(default=None, description="the client's own, given "
                                            "at POST (single-job answers)")
    attachments: list[JobAttachmentOut] | None = Field(
        default=None, description="the files every recipient gets (on single-job answers; "
                                  "a recipient's own are not listed here)")


class RetryOut(JobOut):
    requeued: int = Field(description="how many recipients this retry queued again")


class JobsPageOut(BaseModel):
    jobs: list[JobOut]
    next_before: int | None = Field(description="pass as ?before= for the next (older) page")


class RecipientOut(BaseModel):
    id: int
    to_email: str
    name: str | None
    status: str = Field(description="one of " + ", ".join(RECIPIENT_STATUSES))
    attempts: int
    error_code: str | None
    error: str | None
    message_id: str | None
    gmail_message_id: str | None
    sent_at: datetime | None
    next_attempt_at: datetime | None
    locale: str | None = Field(default=None, description="the language asked for (the "
                               "recipient's locale, else the job's), canonical casing")
    locale_used: str | None = Field(default=None, description="the template variant it was "
                                    "given; null: the template's default")
    metadata: dict[str, Any] | None = Field(default=None, description="the client's own, "
                                            "given at POST")


class TracedRecipientOut(RecipientOut):
    job_id: int
    job_status: str
    sender_email: str
    created_at: datetime = Field(description="when the job stored this recipient")


class TracedSuppressionOut(BaseModel):
    api_key_id: int
    reason: str = Field(description="unsubscribed, hard_bounce, complaint or manual")
    job_id: int | None
    recipient_id: int | None
    detail: str | None
    created_at: datetime


class AddressTraceOut(BaseModel):
    email: str = Field(description="the address looked up, normalised")
    recipients: list[TracedRecipientOut] = Field(
        description="every recipient row of this address, newest first")
    next_before: int | None = Field(description="pass as ?before= for the next page")
    suppressions: list[TracedSuppressionOut] = Field(
        description="the address's suppression entries (this key's; every key's for an "
                    "operator key)")


class RecipientsPageOut(BaseModel):
    recipients: list[RecipientOut]
    next_after: int | None = Field(description="pass as ?after= for the next page")
    test: bool = Field(default=False, description="a test key's job: nothing was really sent")


class RunnerOut(BaseModel):
    id: str
    host: str
    pid: int
    kind: str = Field(description="embedded or worker")
    state: str = Field(description="starting, idle, busy, db_backoff, stopping, stopped")
    current_job_id: int | None
    sent_count: int
    failed_count: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    alive: bool = Field(description="heartbeat fresher than 3 x HEARTBEAT_INTERVAL")


class RunnersOut(BaseModel):
    runners: list[RunnerOut]


class SenderOut(BaseModel):
    email: str
    auth_state: str = Field(description="unknown, ok, auth_revoked, config_error")
    auth_error: str | None
    has_credentials: bool
    rate_per_minute: int
    daily_cap: int
    sent_24h: int
    paused_until: datetime | None
    paused_reason: str | None


class LearnedCapOut(BaseModel):
    kind: str = Field(description="smtp (connections to an SMTP server) or gmail (concurrent "
                                  "sends of one sender)")
    target: str = Field(description="host:port of the SMTP server, or the sender's address")
    cap: int = Field(description="the cap in effect, over all runners")
    configured: int = Field(description="SMTP_MAX_CONNECTIONS or "
                                        "GMAIL_MAX_CONCURRENT_PER_SENDER")
    lowered: bool = Field(description="cap is below configured")
    reason: str = Field(description="the refusal that lowered it, as the server said it")
    lowered_at: datetime
    hold_until: datetime | None = Field(description="no raise before then (LEARNED_CAP_HOLD)")
    successes: int = Field(description="successful sends since the last change; every "
                                       "LEARNED_CAP_RAISE_AFTER of them raise the cap by one")


class SendersOut(BaseModel):
    senders: list[SenderOut]
    learned_caps: list[LearnedCapOut] = Field(description="caps learned from the far side's "
                                                          "refusals")


class HealthOut(BaseModel):
    status: str = Field(description="ok or unavailable")
    database: str
    transport: str | None = Field(default=None, description="gmail, outbox (not really sending) or null")
    runners: int | None = Field(default=None, description="runners with a fresh heartbeat")
    reason: str | None = None


# --- suppression list ---------------------------------------------------------------------------
class SuppressionIn(Strict):
    """Body of POST /api/suppressions."""

    email: Address
    reason: Literal["unsubscribed", "hard_bounce", "complaint", "manual"] = "manual"


class SuppressionOut(BaseModel):
    id: int
    email: str = Field(description="lower-cased")
    reason: str = Field(description="unsubscribed, hard_bounce, complaint or manual")
    job_id: int | None = Field(description="the job it came from (unsubscribe, bounce)")
    recipient_id: int | None
    detail: str | None = Field(description="e.g. the bounce's status and diagnostic")
    created_at: datetime


class SuppressionsPageOut(BaseModel):
    suppressions: list[SuppressionOut]
    next_after: int | None = Field(description="pass as ?after= for the next page")


# --- webhooks -------------------------------------------------------------------------------
WebhookEvent = Literal["recipient.sent", "recipient.failed", "recipient.bounced",
                       "recipient.complained", "recipient.unsubscribed", "recipient.suppressed",
                       "job.completed", "job.paused"]


class WebhookIn(Strict):
    """Body of POST /api/webhooks."""

    url: Annotated[str, Field(min_length=1, max_length=2000,
                              description="https:// (http:// with WEBHOOK_ALLOW_HTTP=1)")]
    events: list[WebhookEvent] | None = Field(
        default=None, min_length=1, description="the event types it receives (default: all)")
    description: Annotated[str, Field(max_length=1000)] | None = None
    batch_size: Annotated[int, Field(ge=1, le=100)] = Field(
        default=1, description="events per POST at most; above 1 the body is a JSON array")


class WebhookOut(BaseModel):
    id: int
    url: str
    description: str | None
    events: list[str]
    batch_size: int
    enabled: bool
    disabled_reason: str | None = Field(description="why it was disabled (410, failing since)")
    failing_since: datetime | None = Field(description="every attempt failed since then")
    next_attempt_at: datetime
    created_at: datetime
    previous_secret_until: datetime | None = Field(
        description="after a rotation, the previous secret signs too until then")
    api_key_id: int


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="whsec_...: shown once; verifies the signatures")


class WebhooksPageOut(BaseModel):
    webhooks: list[WebhookOut]
    next_after: int | None


class WebhookSecretOut(BaseModel):
    id: int
    secret: str = Field(description="the new secret, shown once")
    previous_secret_until: datetime


class WebhookTestOut(BaseModel):
    delivered: bool
    status_code: int | None
    error: str | None
    webhook_id: str


class WebhookDeliveryOut(BaseModel):
    id: int
    webhook_id: str = Field(description="the webhook-id header, the same on every attempt")
    status: Literal["pending", "delivered"]
    events: int
    attempts: int
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class WebhookDeliveriesPageOut(BaseModel):
    deliveries: list[WebhookDeliveryOut]
    next_before: int | None


class AttachmentOut(BaseModel):
    """An uploaded file (POST /api/attachments answers 201 with it; GET returns it)."""

    id: str
    size: int
    sha256: str
    content_type: str
    filename: str | None
    created_at: datetime
    last_used_at: datetime
    deduplicated: bool | None = Field(
        default=None, description="POST only: true when this key had uploaded the same bytes "
                                  "already (the same id is answered, nothing new is stored)")
