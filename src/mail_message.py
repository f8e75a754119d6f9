"""Building the RFC 5322 message of one recipient.

Uses the `email.mime` classes (compat32 policy) because they cost about a third of
`EmailMessage`; the output is CRLF-terminated and checked in tests by parsing it back with the
modern policy. Bodies that are ASCII with short lines go as 7bit, anything else as UTF-8 base64;
non-ASCII subjects and display names are RFC 2047 encoded; domains are IDNA-encoded.
Any header value with a line break is refused (HeaderInjection), never silently cleaned.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.charset import Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import Compat32
from email.utils import format_datetime, formataddr


def _idna2003(domain: str) -> str:  # pragma: no cover - email-validator always brings idna
    return domain.encode("idna").decode("ascii")


try:  # IDNA 2008 / UTS 46, as email-validator (which normalised the addresses) uses
    import idna

    def _uts46(domain: str) -> str:
        return idna.encode(domain, uts46=True).decode("ascii")

    _to_ascii: Callable[[str], str] = _uts46
except ImportError:  # pragma: no cover - email-validator always brings it
    _to_ascii = _idna2003


class _FastCompat32(Compat32):
    """compat32 whose folding skips the Header machinery (most of the build cost) for a value
    that needs none: ASCII, one line, short enough. The output is byte-identical."""

    def fold_binary(self, name: str, value: str | Header) -> bytes:
        limit = self.max_line_length
        if (limit is not None and isinstance(value, str) and value.isascii() and "\r" not in value
                and "\n" not in value and (len(name) + 2 + len(value) <= limit
                                           # one long word (a List-Unsubscribe <URL>): compat32
                                           # could only fold it after the colon; keep one line
                                           or (" " not in value and "\t" not in value
                                               and len(name) + 2 + len(value) <= 998))):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)  # type: ignore[arg-type]  # compat32 folds a Header too


_POLICY = _FastCompat32(linesep="\r\n")
_UTF8 = Charset("utf-8")          # headers: shortest of B/Q; bodies: base64
_ASCII = Charset("us-ascii")      # 7bit
# CR, LF and everything else str.splitlines() treats as a line break, and NUL. The API refuses
# the same characters in every header field at POST (api_schemas uses header_text_problem).
_LINE_BREAK = re.compile("[\x00\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_FIELD_NAME = re.compile(r"[!-9;-~]+\Z")   # printable ASCII except ':' (RFC 5322 ftext)
_MAX_7BIT_LINE = 998
_OWN_HEADERS = frozenset({"from", "to", "reply-to", "subject", "date", "message-id",
                          "mime-version", "content-type", "content-transfer-encoding"})


class HeaderInjection(ValueError):
    """A header value contains CR, LF or another line break: the message must not be sent."""


class UnsupportedAddress(ValueError):
    """An address this builder cannot write (non-ASCII local part needs SMTPUTF8)."""


def header_text_problem(value: str | None) -> str | None:
    """Why `value` cannot be put in a header (a line break of any kind, or NUL), or None."""
    found = _LINE_BREAK.search(value) if value else None
    if found is None:
        return None
    return ("contains NUL" if found.group() == "\x00" else
            f"contains a line break (U+{ord(found.group()):04X})")


def _check(field: str, value: str | None) -> None:
    if value is None:
        return
    problem = header_text_problem(value)
    if problem:
        raise HeaderInjection(f"{field} {problem}: {value[:80]!r}")


def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    return _to_ascii(domain)


def _address(field: str, address: str) -> str:
    """The address as it goes in a header: ASCII, domain IDNA-encoded."""
    _check(field, address)
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise UnsupportedAddress(f"{field} is not an address: {address!r}")
    if not local.isascii():
        raise UnsupportedAddress(f"{field} {address!r} has a non-ASCII local part, which needs "
                                 "SMTPUTF8 and is not supported")
    return f"{local}@{_ascii_domain(domain)}"


def _mailbox(field: str, name: str | None, address: str) -> str:
    _check(f"{field} name", name)
    address = _address(field, address)
    if not name or name.isascii():
        return formataddr((name or "", address))          # quotes the name when needed
    # formataddr would write one encoded word of any length; RFC 2047 caps them at 75 chars
    words = Header(name, _UTF8).encode(maxlinelen=75).split()
    return f"{' '.join(words)} <{address}>"


def _header_value(name: str, text: str) -> str | Header:
    return text if text.isascii() else Header(text, _UTF8, header_name=name)


def _set_header(message: Message, name: str, value: str | Header) -> None:
    # typeshed types a header value as str; compat32 stores a Header as given, folded when written
    message[name] = value  # type: ignore[assignment]


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n")


def _fits_7bit(text: str) -> bool:
    return text.isascii() and all(len(line) <= _MAX_7BIT_LINE for line in text.split("\n"))


def _text_part(body: str, subtype: str) -> MIMENonMultipart:
    part = MIMENonMultipart("text", subtype)
    if _fits_7bit(body):
        part.set_payload(body, _ASCII)          # generator writes CRLF line ends
    else:
        part.set_payload(_crlf(body), _UTF8)    # base64 of canonical CRLF text
    return part


def _body(text: str | None, html: str | None) -> MIMENonMultipart | MIMEMultipart:
    if text is not None and html is not None:
        boundary = "=_mj_" + secrets.token_hex(12)
        if boundary in text or boundary in html:   # only in crafted text; try once more
            boundary = "=_mj_" + secrets.token_hex(16)
        message = MIMEMultipart("alternative", boundary=boundary)
        for part in (_text_part(text, "plain"), _text_part(html, "html")):
            del part["MIME-Version"]
            message.attach(part)
        return message
    if html is not None:
        return _text_part(html, "html")
    return _text_part(text or "", "plain")


# mailjobs' own Message-IDs: <mj.JOB.RECIPIENT.TOKEN@domain>. Since issue 13 TOKEN is 128 random
# bits of its own per recipient (32 hex digits), so knowing one's own Message-ID tells nothing
# about another recipient's; before, it was 8 hex digits shared by a whole claim batch.
RECIPIENT_TOKEN_BYTES = 16
_OWN_ID = re.compile(r"<mj\.\d+\.\d+\.([0-9a-f]+)@[^<>@\s]+>\Z")


def recipient_message_id(job_id: int, recipient_id: int, sender_email: str) -> str:
    """The Message-ID fixed on a recipient's row when it is first claimed: its ids, a token of
    its own (RECIPIENT_TOKEN_BYTES random bytes) and the sender's domain in ASCII (IDNA), so
    the header sent, the stored value and Gmail's rfc822msgid: search are the same string."""
    try:
        domain = _ascii_domain(sender_email.rpartition("@")[2]).lower()
    except (ValueError, UnicodeError):     # not reached for a validated sender; never fail
        domain = "mailjobs.invalid"        # a claim for it: the id stays one consistent string
    if not domain or not re.fullmatch(r"[a-z0-9.-]+", domain):
        domain = "mailjobs.invalid"
    token = secrets.token_hex(RECIPIENT_TOKEN_BYTES)
    return f"<mj.{int(job_id)}.{int(recipient_id)}.{token}@{domain}>"


def has_own_token(message_id: str | None) -> bool:
    """True for a Message-ID made by recipient_message_id (a per-recipient unguessable token);
    False for the older per-batch form and anything else."""
    match = _OWN_ID.match(message_id or "")
    return match is not None and len(match.group(1)) >= 2 * RECIPIENT_TOKEN_BYTES


def new_message_id(domain: str) -> str:
    """A fresh, globally unique Message-ID such as `<1732380000.3f2a...@example.com>`."""
    _check("domain", domain)
    return f"<{int(time.time())}.{secrets.token_hex(12)}@{_ascii_domain(domain)}>"


def _message_id(message_id: str, sender_email: str) -> str:
    _check("Message-ID", message_id)
    message_id = message_id.strip()
    if not message_id:
        return new_message_id(sender_email.rpartition("@")[2])
    if not (message_id.startswith("<") and message_id.endswith(">") and "@" in message_id):
        raise ValueError(f"Message-ID must look like <id@domain>, got {message_id!r}")
    return message_id


@dataclass(frozen=True)
class MailFile:
    """A file in a message: an attachment, or with `cid` an inline image (multipart/related)."""
    filename: str
    content_type: str
    data: bytes
    cid: str | None = None


# <img src="data:image/png;base64,..."> (and url(data:...) in CSS): Gmail shows no data: URI,
# so each becomes an inline part referred to as cid:.
_DATA_URI = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,([A-Za-z0-9+/=\s]+)", re.I)


def inline_data_uris(html: str) -> tuple[str, list[MailFile]]:
    """The HTML with every base64 `data:image/...` URI replaced by a cid: reference, and the
    images as inline files (one per distinct image)."""
    files: dict[str, MailFile] = {}

    def replace(match: re.Match[str]) -> str:
        payload = re.sub(r"\s+", "", match.group(2))
        try:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError):
            return match.group(0)      # not base64: left as it was
        cid = "img-" + hashlib.sha256(data).hexdigest()[:20] + "@mailjobs"
        if cid not in files:
            subtype = match.group(1).split("/", 1)[1].lower()
            ext = {"jpeg": "jpg", "svg+xml": "svg"}.get(subtype, subtype)
            files[cid] = MailFile(f"image-{len(files) + 1}.{ext}", match.group(1).lower(), data,
                                  cid)
        return f"cid:{cid}"

    if "data:" not in html:
        return html, []
    return _DATA_URI.sub(replace, html), list(files.values())


def _b64_lines(data: bytes) -> bytes:
    """base64 in 76-character lines with CRLF line ends, as the email package writes it."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n").rstrip(b"\r\n")


def _file_part(f: MailFile, spliced: list[tuple[bytes, bytes]]) -> MIMENonMultipart:
    """The part of one file. Its payload is a unique placeholder line, replaced by the file's
    base64 once the message is written (`spliced`): the email package's own encoder and
    generator take ~0.9 s of CPU for 7 MB of files (line by line), this ~30 ms."""
    _check("attachment filename", f.filename)
    maintype, _, subtype = f.content_type.partition("/")
    part = MIMENonMultipart(maintype or "application", subtype or "octet-stream")
    del part["MIME-Version"]
    marker = f"=_mj_file_{secrets.token_hex(16)}"
    part.set_payload(marker)
    part["Content-Transfer-Encoding"] = "base64"
    spliced.append((marker.encode("ascii"), f.data))
    # RFC 2231 for a non-ASCII name (filename*=utf-8''...); the name parameter of the
    # Content-Type is kept too, for old clients (RFC 2047-style, as most mailers do)
    charset = None if f.filename.isascii() else "utf-8"
    name: str | tuple[str, str, str] = f.filename if charset is None else (charset, "", f.filename)
    if f.cid is not None:
        _check("cid", f.cid)
        part["Content-ID"] = f"<{f.cid}>"
        part.add_header("Content-Disposition", "inline", filename=name)
    else:
        part.add_header("Content-Disposition", "attachment", filename=name)
    part.set_param("name", f.filename, charset=charset)   # with a charset: the same 3-tuple
    return part


def _multipart(subtype: str, parts: Sequence[Message]) -> MIMEMultipart:
    container = MIMEMultipart(subtype, boundary="=_mj_" + secrets.token_hex(16))
    for part in parts:
        if "MIME-Version" in part:
            del part["MIME-Version"]
        container.attach(part)
    return container


def _with_files(body: MIMENonMultipart | MIMEMultipart, html: str | None,
                files: Sequence[MailFile], spliced: list[tuple[bytes, bytes]]
                ) -> MIMENonMultipart | MIMEMultipart:
    """text/html (or alternative) -> related (inline images) -> mixed (attachments)."""
    inline = [f for f in files if f.cid is not None and html is not None]
    attached = [f for f in files if f not in inline]
    if inline:
        shown = body.get_content_type()
        body = _multipart("related", [body, *(_file_part(f, spliced) for f in inline)])
        body.set_param("type", "multipart/alternative" if shown == "multipart/alternative"
                       else "text/html")
    if attached:
        body = _multipart("mixed", [body, *(_file_part(f, spliced) for f in attached)])
    return body


def build_message(*, sender_email: str, from_name: str | None, reply_to: str | None,
                  to_email: str, to_name: str | None, subject: str, text: str | None,
                  html: str | None, message_id: str, date: datetime | None = None,
                  extra_headers: Mapping[str, str] | None = None,
                  files: Sequence[MailFile] = ()) -> bytes:
    """The full RFC 5322 message (CRLF line ends). An empty `message_id` gets a new one.
    `files`: attachments, and inline images (those with a cid; their HTML refers to cid:...);
    base64 data: image URIs in `html` become inline images too.

    Raises HeaderInjection if any header value contains a line break, UnsupportedAddress or
    ValueError for what cannot be written."""
    _check("Subject", subject)
    if html is not None and "data:" in html:
        html, images = inline_data_uris(html)
        files = [*files, *images]
    message = _body(text, html)
    spliced: list[tuple[bytes, bytes]] = []
    if files:
        message = _with_files(message, html, files, spliced)
    message["From"] = _mailbox("From", from_name, sender_email)
    message["To"] = _mailbox("To", to_name, to_email)
    if reply_to:
        message["Reply-To"] = _address("Reply-To", reply_to)
    _set_header(message, "Subject", _header_value("Subject", subject))
    message["Date"] = format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = _message_id(message_id, sender_email)
    for name, value in (extra_headers or {}).items():
        if not _FIELD_NAME.match(name) or name.lower() in _OWN_HEADERS:
            raise ValueError(f"extra header name not allowed: {name!r}")
        _check(name, value)
        _set_header(message, name, _header_value(name, value))
    raw = message.as_bytes(policy=_POLICY)
    if not spliced:
        return raw
    # each placeholder is its own line, once in the message: the pieces are joined once (no
    # copy of the whole message per file)
    pieces: list[bytes] = []
    at = 0
    for marker, data in sorted(spliced, key=lambda item: raw.index(item[0])):
        start = raw.index(marker, at)
        pieces += [raw[at:start], _b64_lines(data)]
        at = start + len(marker)
    pieces.append(raw[at:])
    return b"".join(pieces)
