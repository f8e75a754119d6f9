"""One claimed recipient at a time: render, build, send, and decide what its outcome means.

Runs in the runner's sending threads; it never touches the database (the runner records the
outcomes in batches). Templates are compiled once per job (each language variant once per job,
when a recipient first needs it).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from jinja2 import TemplateError

from mailjobs import metrics
from mailjobs.attachments.jobs import AttachmentUnavailable, FilesFor
from mailjobs.dao_mysql import DaoError
from mailjobs.mail_message import HeaderInjection, UnsupportedAddress, build_message
from mailjobs.records import Job, Recipient
from mailjobs.settings import Settings
from mailjobs.states import ErrorKind, SenderAction, SendResult
from mailjobs.templating import (
    CompiledTemplates,
    TemplateCompileError,
    TemplateRenderError,
    compile_templates,
    recipient_context,
    render_limits,
    template_limits,
)
from mailjobs.transports.base import OutgoingMessage, SendError, Transport

log = logging.getLogger("mailjobs.scheduler")



@dataclass(frozen=True)
class Outcome:
    recipient: Recipient
    job: Job
    result: SendResult
    provider_id: str | None = None
    error_code: str | None = None
    error: str | None = None
    delay: float = 0.0             # seconds until the retry may be claimed
    refund: bool = False           # the attempt does not count (not the recipient's fault)
    deferred: bool = False         # refused before it left: counts towards MAX_DEFER instead
    not_sent: bool = False         # nothing reached the transport: the daily count is given back
    sender_action: SenderAction | None = None
    sender_delay: float = 0.0
    in_doubt: bool = False         # the attempt may have reached Gmail
    recovered: bool = False        # found already sent by an in-doubt check
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never shorter than the server asked for."""
    delay = random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))
    return max(delay, retry_after or 0.0)


def defer_delay(deferred_for: float, base: float, cap: float,
                retry_after: float | None = None) -> float:
    """The wait after a refusal: what the server asked for, else half to all of the time the
    recipient has been refused so far (at least `base`, at most `cap`): the attempts do not
    grow, but the waits do, geometrically, as they would with exponential backoff."""
    if retry_after:
        return retry_after
    return random.uniform(0.5, 1.0) * min(cap, max(base, deferred_for))


class EmailScheduler:
    def __init__(self, settings: Settings, files: FilesFor | None = None) -> None:
        """`files`: a recipient's attachments (attachments.jobs.RecipientFiles.files); None:
        jobs are sent without any (a scheduler without a database)."""
        self.settings = settings
        self.files = files
        self._compiled: OrderedDict[tuple[int, str | None], CompiledTemplates] = OrderedDict()
        self._lock = threading.Lock()

    def templates(self, job: Job, variant: str | None = None) -> CompiledTemplates:
        """The job's templates, or those of its language `variant` (recipients.locale_used);
        raises TemplateCompileError, and KeyError for a variant the job does not have."""
        with self._lock:
            compiled = self._compiled.get((job.id, variant))
            if compiled is None:
                if variant is None:
                    parts = (job.subject_template, job.html_template, job.text_template)
                else:
                    v = (job.template_variants or {})[variant]
                    parts = (v["subject"], v.get("html"), v.get("text"))
                compiled = compile_templates(*parts, template_limits(self.settings))
                self._compiled[(job.id, variant)] = compiled
                while len(self._compiled) > 1024:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end((job.id, variant))
            return compiled

    def render(self, job: Job, r: Recipient) -> OutgoingMessage:
        """Build the RFC 5322 message; raises TemplateError, TemplateCompileError or
        HeaderInjection for a message that must not be sent."""
        context = recipient_context(job.variables, r.to_email, r.name, r.variables)
        extra = None
        if job.unsubscribe_base_url:   # one-click unsubscribe: our link wins over any variable
            from mailjobs.deliverability.unsubscribe import headers, tokens_for

            context["unsubscribe_url"] = url = tokens_for(self.settings).url(
                job.unsubscribe_base_url, r.id, job.api_key_id)
            extra = headers(url)
        variant = r.locale_used
        try:
            templates = self.templates(job, variant)
        except KeyError:
            raise TemplateCompileError("variant", f"job {job.id} has no template variant "
                                       f"{variant!r}") from None
        subject, html, text = templates.render(context, render_limits(self.settings))
        from_name = job.from_name
        if variant is not None:
            from_name = (job.template_variants or {})[variant].get("from_name") or from_name
        # read last (only for a message that renders), dropped with the message once sent
        files = self.files(job, r, context) if self.files is not None else []
        raw = build_message(sender_email=job.sender_email, from_name=from_name,
                            reply_to=job.reply_to, to_email=r.to_email, to_name=r.name,
                            subject=subject, text=text, html=html,
                            message_id=r.message_id or "", extra_headers=extra, files=files)
        return OutgoingMessage(job.id, r.id, job.sender_email, r.to_email, r.message_id or "", raw)

    def send(self, transport: Transport, job: Job, r: Recipient) -> Outcome:
        started_at = datetime.now(UTC)
        return replace(self._send(transport, job, r), started_at=started_at)

    def _send(self, transport: Transport, job: Job, r: Recipient) -> Outcome:
        if job.expires_at is not None and datetime.now(UTC) >= job.expires_at:
            return Outcome(r, job, SendResult.EXPIRED, error_code="expired", refund=True,
                           error=f"not sent before the job's expires_at "
                                 f"({job.expires_at.isoformat(timespec='seconds')}); "
                                 "never sent late")
        if r.in_doubt:
            resolved = self.resolve_in_doubt(transport, job, r)
            if resolved is not None:
                return resolved
        try:
            message = self.render(job, r)
        except HeaderInjection as exc:
            return Outcome(r, job, SendResult.FAILED, error_code="header_injection", not_sent=True,
                           error=f"refused to send: a rendered header contains a line break "
                                 f"or NUL ({exc})")
        except UnsupportedAddress as exc:
            return Outcome(r, job, SendResult.FAILED, error_code="invalid_address", not_sent=True,
                           error=f"address cannot be put in a message header: {exc}")
        except AttachmentUnavailable as exc:
            return Outcome(r, job, SendResult.FAILED, error_code=exc.code, not_sent=True,
                           error=f"refused to send: {exc}")
        except DaoError as exc:   # a file could not be read: not the recipient's fault
            return self.internal_error(exc, job, r, attempted=False)
        except TemplateRenderError as exc:   # anything the tenant's template raised
            return Outcome(r, job, SendResult.FAILED, error_code="template_error", not_sent=True,
                           error=f"template could not be rendered: {exc}")
        except (TemplateError, TemplateCompileError, TypeError, ValueError) as exc:
            return Outcome(r, job, SendResult.FAILED, error_code="template_error", not_sent=True,
                           error=f"template could not be rendered: {type(exc).__name__}: {exc}")
        started = time.monotonic()
        try:
            result = transport.send(message)
        except SendError as exc:
            return self.classify(exc, job, r)
        except Exception as exc:   # a bug in the transport: the message may have gone out
            return self.internal_error(exc, job, r, attempted=True)
        finally:
            metrics.SEND_SECONDS.labels(getattr(transport, "name", "?")).observe(
                time.monotonic() - started)
        return Outcome(r, job, SendResult.SENT, provider_id=result.provider_id)

    def resolve_in_doubt(self, transport: Transport, job: Job, r: Recipient) -> Outcome | None:
        """Decide about a recipient whose last send may have gone out, before sending again.

        Returns the outcome, or None when it is to be sent (again)."""
        policy = self.settings.in_doubt_policy
        if policy == "resend":
            return None
        if policy == "hold":
            return Outcome(r, job, SendResult.HOLD, error_code=r.error_code or "in_doubt",
                           in_doubt=True,
                           error=f"held (IN_DOUBT_POLICY=hold): the last attempt may have been "
                                 f"sent ({r.error or 'its runner stopped mid-send'}); retry or "
                                 "cancel it")
        try:
            found = transport.find_by_message_id(job.sender_email, r.message_id or "")
        except SendError as exc:
            no_scope = exc.status == 403 or exc.error_code in ("unsupported", "gmail_403")
            if no_scope and policy == "auto":
                log.warning("job=%d recipient=%d: cannot look up %s (%s); resending "
                            "(IN_DOUBT_POLICY=auto)", job.id, r.id, r.message_id, exc)
                return None
            if no_scope:
                hint = ("authorise the gmail.readonly scope (mailjobs auth), or "
                        if exc.error_code != "unsupported" else "")
                return Outcome(r, job, SendResult.HOLD, error_code="in_doubt", in_doubt=True,
                               error=f"in doubt and cannot be checked with this transport: "
                                     f"{exc}; {hint}retry or cancel it")
            return self._retry(exc, job, r, in_doubt=True)
        if found:
            return Outcome(r, job, SendResult.SENT, provider_id=found, recovered=True)
        return None

    def internal_error(self, exc: Exception, job: Job, r: Recipient,
                       attempted: bool) -> Outcome:
        """A bug in mailjobs, not a send result: retried with the backoff up to MAX_ATTEMPTS
        (then failed); when the transport was never called the daily count is given back, and
        when it was, the next attempt treats the message as in doubt."""
        s = self.settings
        n = r.attempts - r.attempts_base
        text = f"{type(exc).__name__}: {exc}"
        if n <= 1:   # the traceback once per recipient, not at every retry
            log.exception("job=%d recipient=%d attempt=%d: unexpected error while sending",
                          job.id, r.id, r.attempts)
        else:
            log.error("job=%d recipient=%d attempt=%d: unexpected error while sending again: %s",
                      job.id, r.id, r.attempts, text)
        if n >= s.max_attempts:
            return Outcome(r, job, SendResult.FAILED, error_code="internal_error",
                           not_sent=not attempted, in_doubt=attempted,
                           error=f"gave up after {n} attempts: {text}")
        return Outcome(r, job, SendResult.RETRY, error_code="internal_error", error=text,
                       not_sent=not attempted, in_doubt=attempted,
                       delay=self._retry_delay(n, None, in_doubt=attempted))

    def _retry(self, exc: SendError, job: Job, r: Recipient, in_doubt: bool) -> Outcome:
        s = self.settings
        text = str(exc)
        if r.attempts - r.attempts_base >= s.max_attempts:
            return Outcome(r, job, SendResult.FAILED, error_code=exc.error_code, in_doubt=in_doubt,
                           error=f"gave up after {r.attempts - r.attempts_base} attempts: {text}")
        delay = self._retry_delay(r.attempts - r.attempts_base, exc.retry_after, in_doubt)
        return Outcome(r, job, SendResult.RETRY, error_code=exc.error_code, error=text, delay=delay,
                       in_doubt=in_doubt)

    def _retry_delay(self, attempt: int, retry_after: float | None, in_doubt: bool) -> float:
        """The backoff; for a send that may have gone out and is to be looked up, at least
        IN_DOUBT_CHECK_DELAY, so that the lookup does not run before Gmail has finished (and
        indexed) a send we stopped waiting for."""
        s = self.settings
        delay = backoff(attempt, s.retry_base_delay, s.retry_max_delay, retry_after)
        if in_doubt and s.looks_up_in_doubt:
            delay = max(delay, s.in_doubt_check_delay)
        return delay

    def _deferred(self, exc: SendError, job: Job, r: Recipient) -> Outcome:
        """Refused before the message left (a refused connection, a 4xx before DATA, no free
        connection slot, Gmail's concurrent-request 429): not an attempt, so the recipient goes
        back with a short delay and its attempt refunded. MAX_DEFER bounds how long that may
        go on without any attempt in between, so a server that refuses forever still ends in
        a readable error."""
        s = self.settings
        since = r.deferred_since
        waited = 0.0 if since is None else (datetime.now(UTC) - since).total_seconds()
        if since is not None and s.max_defer > 0 and waited >= s.max_defer:
            return Outcome(r, job, SendResult.FAILED, error_code=exc.error_code, refund=True,
                           error=f"refused before it was sent for {waited / 3600:.1f} h "
                                 f"(MAX_DEFER {s.max_defer:g} s), never attempted since: {exc}")
        return Outcome(r, job, SendResult.RETRY, error_code=exc.error_code, error=str(exc),
                       refund=True, deferred=True, delay=defer_delay(waited, s.retry_base_delay,
                                                        s.retry_max_delay, exc.retry_after))

    def classify(self, exc: SendError, job: Job, r: Recipient) -> Outcome:
        s = self.settings
        kind, code, text = exc.kind, exc.error_code, str(exc)
        if kind == ErrorKind.PERMANENT:
            return Outcome(r, job, SendResult.FAILED, error_code=code, error=text)
        if kind == ErrorKind.DAILY_LIMIT:
            wait = exc.retry_after or s.daily_limit_pause
            return Outcome(r, job, SendResult.RETRY, error_code=code, error=text, delay=wait,
                           refund=True, sender_action=SenderAction.DEFER, sender_delay=wait)
        if kind == ErrorKind.SENDER_AUTH:
            return Outcome(r, job, SendResult.RETRY, error_code=code, error=text, refund=True,
                           sender_action=SenderAction.PAUSE_AUTH)
        if kind == ErrorKind.SENDER_CONFIG:
            return Outcome(r, job, SendResult.RETRY, error_code=code, error=text, refund=True,
                           sender_action=SenderAction.PAUSE_CONFIG)
        if not exc.attempted:
            return self._deferred(exc, job, r)
        # transient, rate, in_doubt: retry with backoff until MAX_ATTEMPTS
        return self._retry(exc, job, r, in_doubt=kind == ErrorKind.IN_DOUBT)


TransportFactory = Callable[[], Transport]
