"""Reading bounces: delivery status notifications (RFC 3464) and plain-text bounce messages.

`parse(raw)` takes the bytes of a message found in a sender's mailbox and returns a `Bounce`
(which recipient, hard or soft, the DSN status and diagnostic, and the Message-ID of the message
that bounced), or None when the message is not a failure report (a success DSN, a human writing
from postmaster@, anything unreadable).

- `multipart/report; report-type=delivery-status` (Gmail's mailer-daemon, Postfix, Exim,
  Exchange...): the `message/delivery-status` part gives Final-Recipient, Action, Status and
  Diagnostic-Code per recipient; the original Message-ID comes from the returned
  `message/rfc822` or `text/rfc822-headers` part, else from `X-Original-Message-ID` (Gmail puts
  it among the DSN fields), else from the report's In-Reply-To/References.
- A text-only bounce (qmail, old Exim, some appliances): an enhanced status code (5.1.1) or an
  SMTP reply code (550) in the explanation, the first <address> in it, and the Message-ID header
  of the copy of the original message quoted below it.

Status 5.x.x is a hard bounce (the address is suppressed), 4.x.x a soft one (recorded only).

- `multipart/report; report-type=feedback-report` (ARF, RFC 5965: what mailbox providers' feedback
  loops send when a user marks a message as spam) is a `Complaint`: the Feedback-Type, the
  reporter's User-Agent, Original-Rcpt-To when given (often redacted) and the Message-ID of the
  returned message or headers. Feedback-Type `not-spam` and `auth-failure` are not complaints.
"""
from __future__ import annotations

import email
import email.message
import re
from dataclasses import dataclass
from email.parser import HeaderParser

MAX_DIAGNOSTIC = 500
_FAIL_STATUS = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_CODE = re.compile(r"(?<![\d.])([45])\d\d(?=[ -]\S)")
_MESSAGE_ID = re.compile(r"<[^<>\s]+@[^<>\s]+>")
_HEADER_MESSAGE_ID = re.compile(r"^Message-ID:[ \t]*(?:\r?\n[ \t]+)?(<[^<>\s]+@[^<>\s]+>)",
                                re.I | re.M)
_ADDRESS = re.compile(r"<?([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*"
                      r"[A-Za-z0-9])?)>?")
_BOUNCE_FROM = re.compile(r"mailer-daemon|postmaster|mail delivery (sub)?system", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|delivery (has )?failed|failure notice|"
    r"returned mail|mail delivery failed|could not be delivered|non-?delivery", re.I)
# What the explanation of a text bounce says (a person writing from postmaster@ does not).
_BOUNCE_TEXT = re.compile(
    r"(could ?not|couldn't|wasn't able to|was not able to|unable to) (be )?deliver|undeliver|"
    r"delivery (to the following recipients? )?(has )?failed|permanent (error|failure)|"
    r"giving up|returned to sender|failure notice", re.I)
# Where a text bounce starts quoting the original message.
_QUOTE_START = re.compile(
    r"^(-{2,}.*(copy of|original message|below this line|returned message|headers).*|"
    r"(Return-Path|Received|Message-ID|From|Date|Subject|To):[ \t].*)$", re.I | re.M)
_DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_RETURNED_TYPES = ("message/rfc822", "text/rfc822-headers", "message/global",
                   "message/global-headers")


@dataclass(frozen=True)
class Bounce:
    status: str                  # enhanced status code, e.g. "5.1.1"
    action: str | None           # failed, delayed (multipart reports)
    recipient: str | None        # the address that bounced
    diagnostic: str | None       # the remote server's answer, e.g. "smtp; 550 5.1.1 ..."
    message_id: str | None       # "<id@host>" of the message that bounced

    @property
    def hard(self) -> bool:
        return self.status.startswith("5")

    @property
    def kind(self) -> str:
        return "hard" if self.hard else "soft"

    @property
    def error_code(self) -> str:
        return "bounce_5xx" if self.hard else "bounce_4xx"

    @property
    def error(self) -> str:
        """One line for job_recipients.error and the suppression's detail."""
        what = f"{'hard' if self.hard else 'soft'} bounce {self.status}"
        if self.action:
            what += f" ({self.action})"
        if self.recipient:
            what += f" for {self.recipient}"
        return f"{what}: {self.diagnostic or 'no diagnostic given'}"


@dataclass(frozen=True)
class Complaint:
    """An ARF feedback report: a recipient marked one of our messages as spam (or abuse)."""
    feedback_type: str           # abuse, fraud, virus, other
    reporter: str | None         # the report's User-Agent, e.g. "YahooFeedbackLoop/1.0"
    recipient: str | None        # Original-Rcpt-To, when the reporter did not redact it
    message_id: str | None       # "<id@host>" of the message complained about

    kind = "complaint"
    error_code = "complaint"

    @property
    def status(self) -> str:
        return self.feedback_type

    @property
    def error(self) -> str:
        """One line for the suppression's detail and the log."""
        what = f"complaint ({self.feedback_type})"
        if self.recipient:
            what += f" from {self.recipient}"
        return f"{what}, reported by {self.reporter or 'an unnamed feedback loop'}"


_COMPLAINT_TYPES = ("abuse", "fraud", "virus", "other")


def _unfold(value: object) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _message_id(value: object) -> str | None:
    match = _MESSAGE_ID.search(_unfold(value))
    return match.group(0) if match else None


def _address(value: object) -> str | None:
    """The address of `rfc822; user@example.com` (or a bare one)."""
    text = _unfold(value)
    if ";" in text:
        text = text.split(";", 1)[1]
    match = _ADDRESS.search(text)
    return match.group(1) if match else None


def _text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _field_blocks(part: email.message.Message) -> list[email.message.Message]:
    """The header blocks of a delivery-status part: per-message fields, then one block per
    recipient. The email package splits message/delivery-status itself; the global variant
    (RFC 6533) is split here."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, email.message.Message)]
    text = _text(part).replace("\r\n", "\n")
    return [HeaderParser().parsestr(block.strip() + "\n")
            for block in re.split(r"\n[ \t]*\n", text) if block.strip()]


def _returned_message_id(msg: email.message.Message) -> str | None:
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            inner = part.get_payload()
            inner = inner[0] if isinstance(inner, list) and inner else inner
            if isinstance(inner, email.message.Message):
                found = _message_id(inner.get("Message-ID"))
                if found:
                    return found
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            headers = HeaderParser().parsestr(_text(part).replace("\r\n", "\n"))
            found = _message_id(headers.get("Message-ID"))
            if found:
                return found
    return None


def _status_of(action: str, status: str, diagnostic: str) -> str | None:
    match = _FAIL_STATUS.search(status) or _FAIL_STATUS.search(diagnostic)
    if match:
        return ".".join(match.groups())
    code = _SMTP_CODE.search(diagnostic.split(";", 1)[-1])
    if code:
        return f"{code.group(1)}.0.0"
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action)


def _from_report(msg: email.message.Message, part: email.message.Message) -> Bounce | None:
    blocks = _field_blocks(part)
    if not blocks:
        return None
    per_message, per_recipient = blocks[0], blocks[1:] or blocks[:1]
    for block in per_recipient:
        action = _unfold(block.get("Action")).lower() or None
        if action in ("delivered", "relayed", "expanded"):
            continue                        # a success report for this recipient
        diagnostic = _unfold(block.get("Diagnostic-Code"))
        status = _status_of(action or "", _unfold(block.get("Status")), diagnostic)
        if status is None:
            continue
        recipient = _address(block.get("Final-Recipient") or block.get("Original-Recipient"))
        message_id = (_returned_message_id(msg)
                      or _message_id(block.get("X-Original-Message-ID"))
                      or _message_id(per_message.get("X-Original-Message-ID"))
                      or _message_id(msg.get("In-Reply-To"))
                      or _message_id(msg.get("References")))
        return Bounce(status, action, recipient, diagnostic[:MAX_DIAGNOSTIC] or None, message_id)
    return None


def _from_text(msg: email.message.Message) -> Bounce | None:
    sender, subject = _unfold(msg.get("From")), _unfold(msg.get("Subject"))
    if not (_BOUNCE_FROM.search(sender) or _BOUNCE_SUBJECT.search(subject)):
        return None
    texts = [_text(p) for p in msg.walk()
             if p.get_content_type() == "text/plain" and not p.is_multipart()]
    body = "\n".join(texts).replace("\r\n", "\n")
    quote = _QUOTE_START.search(body)
    explanation = body[:quote.start()] if quote else body
    if not (_BOUNCE_SUBJECT.search(subject) or _BOUNCE_TEXT.search(explanation)):
        return None
    match = _FAIL_STATUS.search(explanation)
    if match:
        status = ".".join(match.groups())
    else:
        code = _SMTP_CODE.search(explanation)
        if code:
            status = f"{code.group(1)}.0.0"
        elif re.search(r"permanent(ly)?|does not exist|user unknown|no such user", explanation,
                       re.I):
            status = "5.0.0"
        elif re.search(r"delayed|temporar(y|ily)|will (keep )?(re)?try", explanation, re.I):
            status = "4.0.0"
        else:
            return None
    address = re.search(r"<([^<>\s@]+@[^<>\s@]+)>", explanation) or _ADDRESS.search(explanation)
    found = _HEADER_MESSAGE_ID.search(body[quote.start():] if quote else "")
    message_id = (found.group(1) if found else None) or _returned_message_id(msg) \
        or _message_id(msg.get("In-Reply-To")) or _message_id(msg.get("References"))
    lines = [ln.strip() for ln in explanation.splitlines() if ln.strip()]
    diagnostic = next((ln for ln in lines if status in ln or (match is None and _SMTP_CODE.search(
        ln))), " ".join(lines[:3]))
    return Bounce(status, None, address.group(1) if address else None,
                  diagnostic[:MAX_DIAGNOSTIC] or None, message_id)


def _from_feedback(msg: email.message.Message, part: email.message.Message) -> Complaint | None:
    blocks = _field_blocks(part)
    if not blocks:
        return None
    fields = blocks[0]
    feedback_type = _unfold(fields.get("Feedback-Type")).lower()
    if feedback_type not in _COMPLAINT_TYPES:
        return None                         # not-spam, auth-failure, missing: no complaint
    return Complaint(feedback_type, _unfold(fields.get("User-Agent"))[:200] or None,
                     _address(fields.get("Original-Rcpt-To")),
                     _returned_message_id(msg) or _message_id(msg.get("In-Reply-To")))


def parse(raw: bytes) -> Bounce | Complaint | None:
    """The bounce or complaint this message reports, or None when it reports neither."""
    try:
        msg = email.message_from_bytes(raw)      # compat32: lenient with what MTAs write
    except Exception:   # the email package rarely raises, but this input is anyone's
        return None
    for part in msg.walk():
        if part.get_content_type() in _DSN_TYPES:
            return _from_report(msg, part)
        if part.get_content_type() == "message/feedback-report":
            return _from_feedback(msg, part)
    return _from_text(msg)
