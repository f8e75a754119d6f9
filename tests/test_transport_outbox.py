"""OutboxTransport writes .eml files atomically and finds them by Message-ID; NullTransport."""

import email
import email.policy
import os

import pytest

from mailjobs.mail_message import build_message, new_message_id
from mailjobs.transports.base import OutgoingMessage, SendError, SendResult
from mailjobs.transports.null import NullTransport
from mailjobs.transports.outbox import OutboxTransport


def message(job_id=3, recipient_id=11, subject="Hello") -> OutgoingMessage:
    message_id = new_message_id("example.com")
    raw = build_message(sender_email="ops@example.com", from_name="Ops", reply_to=None,
                        to_email="anna@example.org", to_name="Anna", subject=subject,
                        text="Hi\n", html=None, message_id=message_id)
    return OutgoingMessage(job_id, recipient_id, "ops@example.com", "anna@example.org",
                           message_id, raw)


def test_send_writes_the_raw_message(tmp_path):
    t = OutboxTransport(tmp_path / "outbox")
    msg = message()
    result = t.send(msg)
    assert result == SendResult(provider_id="3/11.eml")
    path = tmp_path / "outbox" / "3" / "11.eml"
    assert path.read_bytes() == msg.raw
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == msg.message_id and parsed["Subject"] == "Hello"


def test_resend_replaces_the_file_and_leaves_no_temporary_files(tmp_path):
    t = OutboxTransport(tmp_path)
    t.send(message(subject="first"))
    second = message(subject="second")
    t.send(second)
    assert os.listdir(tmp_path / "3") == ["11.eml"]
    assert (tmp_path / "3" / "11.eml").read_bytes() == second.raw


def test_find_by_message_id(tmp_path):
    t = OutboxTransport(tmp_path)
    first, second = message(recipient_id=1), message(job_id=4, recipient_id=2)
    t.send(first)
    t.send(second)
    assert t.find_by_message_id("ops@example.com", second.message_id) == "4/2.eml"
    assert t.find_by_message_id("ops@example.com", first.message_id.strip("<>")) == "3/1.eml"
    assert t.find_by_message_id("ops@example.com", "<nope@example.com>") is None
    assert OutboxTransport(tmp_path / "missing").find_by_message_id("x", "<a@b>") is None


def test_unwritable_outbox_is_a_transient_send_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SendError) as caught:
        OutboxTransport(blocker).send(message())
    assert caught.value.kind == "transient" and str(blocker) in str(caught.value)


def test_null_transport():
    t = NullTransport()
    assert t.send(message(recipient_id=42)).provider_id == "null-42"
    with pytest.raises(SendError):
        t.find_by_message_id("ops@example.com", "<a@b>")
    t.close()


def test_send_error_carries_its_fields_and_refuses_unknown_kinds():
    import pickle
    error = SendError("rate", "gmail_429", "Gmail 429", retry_after=3.0, status=429)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.error_code, str(copy), copy.retry_after, copy.status) == \
        ("rate", "gmail_429", "Gmail 429", 3.0, 429)
    with pytest.raises(ValueError):
        SendError("sometimes", "x", "y")
