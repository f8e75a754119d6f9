"""build_message: the bytes are parsed back with the modern email policy and checked."""

import email
import email.header
import email.policy
import email.utils
import re
from datetime import UTC, datetime

import pytest

from mailjobs.mail_message import HeaderInjection, UnsupportedAddress, build_message, new_message_id

BASE = dict(sender_email="ops@example.com", from_name="Ops Team", reply_to="help@example.com",
            to_email="anna@example.org", to_name="Anna", subject="Your order",
            text="Hello Anna,\nyour order is ready.\n", html="<p>Hello <b>Anna</b></p>\n",
            message_id="<m1.abc@example.com>")


def build(**changes) -> bytes:
    return build_message(**{**BASE, **changes})


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def content(part) -> str:
    return part.get_content().replace("\r\n", "\n")


def test_multipart_alternative_with_all_headers():
    date = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    raw = build(date=date, extra_headers={"List-Unsubscribe": "<mailto:u@example.com>"})
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["From"] == "Ops Team <ops@example.com>"
    assert msg["To"] == "Anna <anna@example.org>"
    assert msg["Reply-To"] == "help@example.com"
    assert msg["Subject"] == "Your order"
    assert msg["Message-ID"] == "<m1.abc@example.com>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime == date
    assert msg["List-Unsubscribe"] == "<mailto:u@example.com>"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain" and content(text) == BASE["text"]
    assert html.get_content_type() == "text/html" and content(html) == BASE["html"]
    assert "MIME-Version" not in text and "MIME-Version" not in html
    for name in ("From", "To", "Subject", "Date", "Message-ID"):
        assert len(msg.get_all(name)) == 1


def test_crlf_line_ends_and_7bit_clean():
    raw = build(subject="Grüße aus Köln", to_name="Zoë Ø", text="naïve\ntext\n")
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_non_ascii_subject_names_and_bodies_round_trip():
    raw = build(subject="Grüße, Anna! 🎉 Ihre Bestellung", from_name="Büro Köln",
                to_name="Anna Müller", text="Grüße\nAnna 🎉\n", html="<p>Grüße 🎉</p>\n")
    assert b"Gr\xc3\xbc" not in raw                      # nothing raw UTF-8
    msg = parse(raw)
    assert msg["Subject"] == "Grüße, Anna! 🎉 Ihre Bestellung"
    assert msg["From"].addresses[0].display_name == "Büro Köln"
    assert msg["To"].addresses[0].display_name == "Anna Müller"
    assert msg["To"].addresses[0].addr_spec == "anna@example.org"
    text, html = msg.iter_parts()
    assert text["Content-Transfer-Encoding"] == "base64"
    assert content(text) == "Grüße\nAnna 🎉\n" and content(html) == "<p>Grüße 🎉</p>\n"


def test_ascii_body_is_7bit_but_long_lines_are_encoded():
    msg = parse(build(html=None))
    assert msg.get_content_type() == "text/plain"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    long_line = "x" * 2000 + "\n"
    raw = build(html=None, text=long_line)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert content(parse(raw)) == long_line


def test_html_only_and_text_only():
    msg = parse(build(text=None))
    assert msg.get_content_type() == "text/html" and content(msg) == BASE["html"]
    msg = parse(build(html=None))
    assert msg.get_content_type() == "text/plain" and content(msg) == BASE["text"]


def test_long_subject_is_folded_and_round_trips():
    subject = "Ünïcödé " * 30 + "end"
    raw = build(subject=subject)
    assert all(len(line) <= 78 for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n"))
    assert parse(raw)["Subject"] == subject
    ascii_subject = "word " * 40 + "end"
    assert parse(build(subject=ascii_subject))["Subject"] == ascii_subject


def test_long_non_ascii_display_name_uses_short_encoded_words():
    name = "株式会社サンプル商事 お客様サポートセンター 東京本社 営業部"
    raw = build(from_name=name)
    head = raw.split(b"\r\n\r\n")[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert all(len(word) <= 75 for word in re.findall(rb"=\?utf-8\?[bq]\?[^?]*\?=", head))
    # email.policy.default's address parser puts a space between adjacent encoded words in a
    # display name (RFC 2047 says to drop it); the RFC 2047 decoder of email.header does not.
    folded = email.message_from_bytes(raw)["From"]
    decoded = str(email.header.make_header(email.header.decode_header(folded)))
    assert email.utils.parseaddr(decoded) == (name, "ops@example.com")


def test_display_names_with_specials_are_quoted():
    msg = parse(build(from_name='Ops, "Night" Team', to_name="O'Brien <x>"))
    assert msg["From"].addresses[0].display_name == 'Ops, "Night" Team'
    assert msg["From"].addresses[0].addr_spec == "ops@example.com"
    assert msg["To"].addresses[0].display_name == "O'Brien <x>"


def test_no_names_no_reply_to():
    msg = parse(build(from_name=None, to_name="", reply_to=None))
    assert msg["From"] == "ops@example.com" and msg["To"] == "anna@example.org"
    assert "Reply-To" not in msg


def test_unicode_domain_is_idna_encoded():
    msg = parse(build(to_email="anna@bücher.example"))
    assert msg["To"].addresses[0].addr_spec == "anna@xn--bcher-kva.example"


def test_non_ascii_local_part_is_refused():
    with pytest.raises(UnsupportedAddress):
        build(to_email="zoë@example.org")


@pytest.mark.parametrize("field,value", [
    ("subject", "Hello\r\nBcc: victim@example.net"),
    ("subject", "Hello\nBcc: victim@example.net"),
    ("subject", "Hello\u2028world"),
    ("from_name", "Ops\rX-Evil: 1"),
    ("to_name", "Anna\nBcc: x@example.net"),
    ("to_email", "anna@example.org\r\nBcc: x@example.net"),
    ("sender_email", "ops@example.com\nX: y"),
    ("reply_to", "help@example.com\r\nBcc: x@example.net"),
    ("message_id", "<a@example.com>\r\nBcc: x@example.net"),
])
def test_header_injection_is_refused(field, value):
    with pytest.raises(HeaderInjection):
        build(**{field: value})


def test_header_injection_in_extra_header_value():
    with pytest.raises(HeaderInjection):
        build(extra_headers={"List-Unsubscribe": "<mailto:u@example.com>\r\nBcc: x@example.net"})
    assert issubclass(HeaderInjection, ValueError)


@pytest.mark.parametrize("name", ["From", "message-id", "Bad Name", "X:Y", ""])
def test_extra_header_names_are_checked(name):
    with pytest.raises(ValueError):
        build(extra_headers={name: "v"})


def test_line_breaks_in_bodies_are_fine():
    msg = parse(build(text="a\r\nb\rc\n", html=None))
    assert content(msg) == "a\nb\nc\n"


def test_empty_message_id_gets_a_new_one_and_ids_are_unique():
    msg = parse(build(message_id=""))
    assert re.fullmatch(r"<[^<>@\s]+@example\.com>", msg["Message-ID"])
    ids = {new_message_id("example.com") for _ in range(1000)}
    assert len(ids) == 1000
    assert new_message_id("bücher.example").endswith("@xn--bcher-kva.example>")
    with pytest.raises(ValueError):
        build(message_id="no-brackets")


def test_boundary_is_not_in_the_bodies():
    msg = parse(build())
    boundary = msg.get_boundary()
    assert boundary and boundary not in BASE["text"] and boundary not in BASE["html"]
    assert parse(build()).get_boundary() != boundary
