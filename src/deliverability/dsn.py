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
`Bounce.named` (and `Complaint.named`) are the addresses the report's own fields give
(Final-Recipient, Original-Recipient, Original-Rcpt-To): bounces.py counts a report only when
the recipient its Message-ID names is one of them (when there are any).

- `multipart/report; report-type=feedback-report` (ARF, RFC 5965: what mailbox providers' feedback
  loops send when a user marks a message as spam) is a `Complaint`: the Feedback-Type, the
  reporter's User-Agent, Original-Rcpt-To when given (often redacted) and the Message-ID of the
  returned message or headers. Feedback-Type `not-spam` and `auth-failure` are not complaints.

Anyone can send these messages, so `parse` is total and linear: it never raises (anything it
cannot read is an `Unreadable` with the reason), it reads at most `max_bytes` of a message, and
no pattern it runs over the message has unbounded quantifiers that can backtrack into each other
(every run is bounded or anchored, the quote detection goes line by line). The email package's
MIME parameter parser is quadratic in the number of `;` and quotes of a header; `_Message`
replaces it with a linear one over a bounded prefix of the header. bench/dsn.py measures the
growth; tests/test_bounces.py fuzzes the parser.
"""
from __future__ import annotations

import codecs
import email
import email.message
import email.utils
import re
from dataclasses import dataclass
from email.parser import BytesParser, HeaderParser
from typing import Any

from mailjobs import defaults

MAX_DIAGNOSTIC = 500
MAX_PARAM_HEADER = 4096     # characters of a Content-Type header whose parameters are read
MAX_PARAMS = 32             # parameters read from one such header
TEXT_SCAN = 16384           # characters of a text bounce's explanation searched for codes
FIELD_SCAN = 4096           # characters of a report field (Status, Diagnostic-Code) searched
# The email package's parser costs about a microsecond per line, plus a little per line for each
# enclosing multipart: a message is read up to its MAX_LINES-th line and its MAX_MULTIPARTS-th
# "multipart/" (a report and the copy it returns need a handful of each).
MAX_LINES = 10000
MAX_MULTIPARTS = 10
_LINE_END = re.compile(rb"[\r\n]")     # a CRLF counts twice: a cap, not a line count
_MULTIPART = re.compile(rb"multipart/", re.I)
# Codecs that are not charsets of mail text: idna and punycode raise on arbitrary bytes (and
# punycode decodes in quadratic time), the escape codecs turn text into other text.
_UNSAFE_CODECS = frozenset({"idna", "punycode", "raw_unicode_escape", "unicode_escape"})
# The [45] comes first (then a lookbehind says no digit or dot was before it), so the engine
# skips quickly to each 4 or 5 instead of trying a lookbehind at every character.
_FAIL_STATUS = re.compile(r"([45])(?<![\d.][45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_CODE = re.compile(r"([45])(?<![\d.][45])\d\d(?=[ -]\S)")
# Bounded runs, no '@' inside either half: one try costs at most ~510 steps, and a try starts
# only at a '<'.
_ID = r"<[^<>@\s]{1,255}@[^<>@\s]{1,255}>"
_MESSAGE_ID = re.compile(_ID)
_HEADER_MESSAGE_ID = re.compile(rf"^Message-ID:[ \t]*(?:\r?\n[ \t]+)?({_ID})", re.I | re.M)
# A local part (at most 64 characters) that starts where a run of local-part characters
# starts (the lookbehind), so a long run is tried once, not from each of its characters.
_LOCAL_CHARS = r"A-Za-z0-9.!#$%&'*+/=?^_`{|}~-"
_ADDRESS = re.compile(rf"(?<![{_LOCAL_CHARS}])([{_LOCAL_CHARS}]{{1,64}}@[A-Za-z0-9]"
                      r"(?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)")
_BRACKETED_ADDRESS = re.compile(r"<([^<>\s@]{1,64}@[^<>\s@]{1,255})>")
_BOUNCE_FROM = re.compile(r"mailer-daemon|postmaster|mail delivery (sub)?system", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|delivery (has )?failed|failure notice|"
    r"returned mail|mail delivery failed|could not be delivered|non-?delivery", re.I)
# What the explanation of a text bounce says (a person writing from postmaster@ does not).
_BOUNCE_TEXT = re.compile(
    r"(could ?not|couldn't|wasn't able to|was not able to|unable to) (be )?deliver|undeliver|"
    r"delivery (to the following recipients? )?(has )?failed|permanent (error|failure)|"
    r"giving up|returned to sender|failure notice", re.I)
# Where a text bounce starts quoting the original message: a line that starts with "--" and
# names the copy, or a header line of the copy (checked line by line: see _quote_start).
_QUOTE_WORDS = ("copy of", "original message", "below this line", "returned message", "headers")
_QUOTE_HEADER = re.compile(r"(Return-Path|Received|Message-ID|From|Date|Subject|To):[ \t]", re.I)
# Searched in the lower-cased explanation (faster than re.I).
_PERMANENT = re.compile(r"permanent(ly)?|does not exist|user unknown|no such user")
_TEMPORARY = re.compile(r"delayed|temporar(y|ily)|will (keep )?(re)?try")
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
    named: tuple[str, ...] = ()  # Final-Recipient and Original-Recipient, when given

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
    named: tuple[str, ...] = ()  # Original-Rcpt-To, when given

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


@dataclass(frozen=True)
class Unreadable:
    """A mailbox message the parser could not read (a broken charset, a part too deep...):
    logged, recorded and counted by bounces.py, never acted on."""
    reason: str

    kind = "unreadable"
    message_id = None
    named: tuple[str, ...] = ()


_COMPLAINT_TYPES = ("abuse", "fraud", "virus", "other")


def _split_params(value: str) -> list[str]:
    """`_parseparam` of the email package, linear: split on ';' outside double quotes."""
    value = value.replace("\\\\", "\x00").replace('\\"', "\x01")   # escaped \\ and \"
    pieces: list[str] = [""]
    for i, segment in enumerate(value.split('"')):
        if i % 2:                                  # inside quotes: kept whole
            pieces[-1] += f'"{segment}"'
            continue
        first, *rest = segment.split(";", MAX_PARAMS)
        pieces[-1] += first
        pieces.extend(rest)
        if len(pieces) > MAX_PARAMS:
            break
    return [p.replace("\x00", "\\\\").replace("\x01", '\\"').strip()
            for p in pieces[:MAX_PARAMS]]


class _Message(email.message.Message):
    """compat32's Message with a linear parameter parser over a bounded header prefix (the
    feedparser asks every part for its boundary, we ask for the charset)."""

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:   # the stdlib's signature
        value = self.get(header)
        if value is None:
            return failobj
        params = []
        for piece in _split_params(str(value)[:MAX_PARAM_HEADER]):
            name, eq, val = piece.partition("=")
            params.append((name.strip().lower() if eq else name.strip(), val.strip()))
        return email.utils.decode_params(params)


def _unfold(value: object) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _message_id(value: object) -> str | None:
    match = _MESSAGE_ID.search(_unfold(value))
    return match.group(0) if match else None


def _address(value: object) -> str | None:
    """The address of `rfc822; user@example.com` (or a bare one)."""
    text = _unfold(value)[:1024]
    if ";" in text:
        text = text.split(";", 1)[1]
    match = _ADDRESS.search(text)
    return match.group(1) if match else None


def _text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        text = part.get_payload()
        return text if isinstance(text, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        if codecs.lookup(charset).name.replace("-", "_") not in _UNSAFE_CODECS:
            return payload.decode(charset, "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        pass      # an unknown charset, or one with a NUL: read as UTF-8
    return payload.decode("utf-8", "replace")


def _field_blocks(part: email.message.Message) -> list[email.message.Message]:
    """The header blocks of a delivery-status part: per-message fields, then one block per
    recipient. The email package splits message/delivery-status itself; the global variant
    (RFC 6533) is split here."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, email.message.Message)]
    text = _text(part).replace("\r\n", "\n")
    return [HeaderParser(_Message).parsestr(block.strip() + "\n")
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
            headers = HeaderParser(_Message).parsestr(_text(part).replace("\r\n", "\n"))
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
        diagnostic = _unfold(block.get("Diagnostic-Code"))[:FIELD_SCAN]
        status = _status_of(action or "", _unfold(block.get("Status"))[:FIELD_SCAN], diagnostic)
        if status is None:
            continue
        named = tuple(dict.fromkeys(a for a in (_address(block.get("Final-Recipient")),
                                                _address(block.get("Original-Recipient"))) if a))
        recipient = named[0] if named else None
        message_id = (_returned_message_id(msg)
                      or _message_id(block.get("X-Original-Message-ID"))
                      or _message_id(per_message.get("X-Original-Message-ID"))
                      or _message_id(msg.get("In-Reply-To"))
                      or _message_id(msg.get("References")))
        return Bounce(status, action, recipient, diagnostic[:MAX_DIAGNOSTIC] or None, message_id,
                      named)
    return None


def _from_text(msg: email.message.Message) -> Bounce | None:
    sender, subject = _unfold(msg.get("From")), _unfold(msg.get("Subject"))
    if not (_BOUNCE_FROM.search(sender) or _BOUNCE_SUBJECT.search(subject)):
        return None
    texts = [_text(p) for p in msg.walk()
             if p.get_content_type() == "text/plain" and not p.is_multipart()]
    body = "\n".join(texts).replace("\r\n", "\n")
    quote = _quote_start(body)
    explanation = body[:quote if quote is not None else TEXT_SCAN][:TEXT_SCAN]
    if not (_BOUNCE_SUBJECT.search(subject) or _BOUNCE_TEXT.search(explanation)):
        return None
    match = _FAIL_STATUS.search(explanation)
    if match:
        status = ".".join(match.groups())
    else:
        code = _SMTP_CODE.search(explanation)
        if code:
            status = f"{code.group(1)}.0.0"
        elif _PERMANENT.search(explanation.lower()):
            status = "5.0.0"
        elif _TEMPORARY.search(explanation.lower()):
            status = "4.0.0"
        else:
            return None
    address = _BRACKETED_ADDRESS.search(explanation) or _ADDRESS.search(explanation)
    found = _HEADER_MESSAGE_ID.search(body[quote:] if quote is not None else "")
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
    recipient = _address(fields.get("Original-Rcpt-To"))
    return Complaint(feedback_type, _unfold(fields.get("User-Agent"))[:200] or None, recipient,
                     _returned_message_id(msg) or _message_id(msg.get("In-Reply-To")),
                     (recipient,) if recipient else ())


def _quote_start(body: str) -> int | None:
    """Offset of the first line where a text bounce starts quoting the original message."""
    offset = 0
    for line in body.split("\n"):
        if (line.startswith("--") and any(w in line.lower() for w in _QUOTE_WORDS)) \
                or _QUOTE_HEADER.match(line):
            return offset
        offset += len(line) + 1
    return None


def _cut_at(raw: bytes, pattern: re.Pattern[bytes], n: int, count: int) -> bytes:
    """raw up to the start of the n-th match of pattern (all of it when there are fewer;
    `count`, a fast upper bound of the matches, skips the search when it is below n)."""
    if count < n:
        return raw
    for i, match in enumerate(pattern.finditer(raw)):
        if i + 1 >= n:
            return raw[:match.start()]
    return raw


def bounded(raw: bytes, max_bytes: int = defaults.MAILBOX_MAX_MESSAGE_BYTES) -> bytes:
    """The part of a message `parse` reads: at most max_bytes bytes (0: no byte limit),
    MAX_LINES lines and MAX_MULTIPARTS multiparts."""
    if max_bytes > 0:
        raw = raw[:max_bytes]
    raw = _cut_at(raw, _LINE_END, MAX_LINES + 1, raw.count(b"\n") + raw.count(b"\r"))
    return _cut_at(raw, _MULTIPART, MAX_MULTIPARTS + 1, raw.lower().count(b"multipart/"))


def parse(raw: bytes, max_bytes: int = defaults.MAILBOX_MAX_MESSAGE_BYTES
          ) -> Bounce | Complaint | Unreadable | None:
    """The bounce or complaint this message reports, None when it reports neither, Unreadable
    when it cannot be read. Never raises. Reads the first `max_bytes` bytes only, and at most
    MAX_LINES lines (a report's own parts come first; the returned copy, last, may be cut)."""
    try:
        msg = BytesParser(_Message).parsebytes(bounded(raw, max_bytes))
        for part in msg.walk():
            if part.get_content_type() in _DSN_TYPES:
                return _from_report(msg, part)
            if part.get_content_type() == "message/feedback-report":
                return _from_feedback(msg, part)
        return _from_text(msg)
    except (RecursionError, MemoryError) as exc:
        return Unreadable(f"{type(exc).__name__} (parts nested too deep or too large)")
    except Exception as exc:   # this input is anyone's: nothing in it may stop a check
        return Unreadable(f"{type(exc).__name__}: {str(exc)[:200]}")
