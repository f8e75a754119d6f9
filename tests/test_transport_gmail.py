"""GmailTransport with the real google-api-python-client against FakeGmail (tests/fake_gmail.py)."""

import io
import socket
import time
from datetime import UTC, datetime, timedelta

import google_auth_httplib2
import httplib2
import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseUpload

from fake_gmail import FakeGmail
from mailjobs.mail_message import build_message, new_message_id
from mailjobs.transports.base import OutgoingMessage, SendError
from mailjobs.transports.gmail import (
    GmailTransport,
    classify_http_error,
    credentials_from_info,
    credentials_to_info,
    retry_after_from_header,
)

SENDER = "ops@example.com"


class MemoryCredentials:
    """The credentials provider, in memory: stores info dicts like the database one."""

    def __init__(self) -> None:
        self.info: dict[str, dict] = {}
        self.saved: list[tuple[str, str]] = []
        self.fail_save = False

    def get(self, sender_email: str) -> Credentials:
        return credentials_from_info(self.info[sender_email], None)

    def save(self, sender_email: str, creds: Credentials) -> None:
        if self.fail_save:
            raise RuntimeError("database is down")
        self.saved.append((sender_email, creds.token))
        self.info[sender_email] = credentials_to_info(creds)


@pytest.fixture()
def fake():
    with FakeGmail() as server:
        server.add_account(SENDER)
        yield server


@pytest.fixture()
def creds(fake):
    provider = MemoryCredentials()
    provider.info[SENDER] = fake.authorized_user_info(SENDER)
    return provider


@pytest.fixture()
def transport(fake, creds):
    t = GmailTransport(creds, api_endpoint=fake.url, timeout=5)
    yield t
    t.close()


def message(subject="Grüße, Anna 🎉", html="<p>Hallo <b>Anna</b> – Grüße</p>\n",
            to="anna@example.org", recipient_id=1) -> OutgoingMessage:
    message_id = new_message_id("example.com")
    raw = build_message(sender_email=SENDER, from_name="Büro Köln", reply_to=None, to_email=to,
                        to_name="Anna Müller", subject=subject, text="Hallo Anna\nGrüße\n",
                        html=html, message_id=message_id)
    return OutgoingMessage(7, recipient_id, SENDER, to, message_id, raw)


def paths(fake) -> list[tuple[str, str, int]]:
    return [(method, path.split("?")[0], status) for method, path, status in fake.requests]


def test_send_delivers_exactly_the_raw_message(fake, transport, creds):
    msg = message()
    result = transport.send(msg)
    assert fake.count() == 1
    record = fake.sent[0]
    assert result.provider_id == record.id and len(record.id) == 16
    assert record.account == SENDER and record.raw == msg.raw
    parsed = record.message
    assert parsed["Subject"] == "Grüße, Anna 🎉"
    assert parsed["To"].addresses[0].display_name == "Anna Müller"
    assert parsed["Message-ID"] == msg.message_id
    text, html = parsed.iter_parts()
    assert text.get_content().replace("\r\n", "\n") == "Hallo Anna\nGrüße\n"
    assert "Grüße" in html.get_content()
    assert fake.sent_to("ANNA@example.org") == [record]
    assert paths(fake) == [("POST", "/gmail/v1/users/me/messages/send", 200)]
    assert creds.saved == []                      # token was fresh: nothing refreshed


ERRORS = [  # status, reason, message, headers -> kind, code
    (400, "invalidArgument", "Invalid To header", None, "permanent", "gmail_400"),
    (400, "badRequest", "Request payload size exceeds the limit: 5242880 bytes.", None,
     "permanent", "message_too_large"),
    (400, "failedPrecondition", "Mail service not enabled", None, "sender_config", "sender_config"),
    (403, "rateLimitExceeded", "Rate Limit Exceeded", None, "rate", "rate_limited"),
    (403, "userRateLimitExceeded", "User Rate Limit Exceeded", None, "rate", "rate_limited"),
    (403, "dailyLimitExceeded", "Daily Limit Exceeded", None, "daily_limit", "daily_limit"),
    (403, "domainPolicy", "The domain administrators have disabled Gmail apps.", None,
     "sender_config", "gmail_403"),
    (403, "insufficientPermissions", "Insufficient Permission", None, "sender_config", "gmail_403"),
    (403, "accessNotConfigured", "Gmail API has not been used in project 1 before", None,
     "sender_config", "gmail_403"),
    (429, "rateLimitExceeded", "Too many concurrent requests for user", {"Retry-After": "7"},
     "rate", "gmail_concurrent"),
    (429, "rateLimitExceeded", "Rate Limit Exceeded", {"Retry-After": "7"}, "rate", "gmail_429"),
    (500, "backendError", "Backend Error", None, "in_doubt", "gmail_5xx"),
    (503, "backendError", "The service is currently unavailable.", None, "in_doubt", "gmail_5xx"),
]


@pytest.mark.parametrize("status,reason,text,headers,kind,code", ERRORS)
def test_error_classes(fake, transport, status, reason, text, headers, kind, code):
    fake.fail_next(status, reason, text, headers=headers)
    with pytest.raises(SendError) as caught:
        transport.send(message())
    error = caught.value
    assert (error.kind, error.error_code, error.status) == (kind, code, status)
    assert error.attempted is (kind != "rate")   # a rate refusal: nothing was sent
    assert str(error).startswith(f"Gmail {status} {reason}: {text}")
    assert error.retry_after == (7.0 if headers else None)
    assert fake.count() == 0
    assert transport.send(message()).provider_id == fake.sent[0].id   # the next one goes


def test_invalid_argument_message_is_exactly_googles(fake, transport):
    fake.fail_next(400, "invalidArgument", "Invalid To header")
    with pytest.raises(SendError, match=r"^Gmail 400 invalidArgument: Invalid To header$"):
        transport.send(message())


def test_sending_limit_429_defers_until_the_time_in_the_text(fake, transport):
    at = datetime.now(UTC) + timedelta(hours=2)
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
    fake.fail_next(429, "rateLimitExceeded",
                   f"User-rate limit exceeded (Mail sending). Retry after {stamp}")
    with pytest.raises(SendError) as caught:
        transport.send(message())
    assert (caught.value.kind, caught.value.error_code) == ("daily_limit", "daily_limit")
    assert caught.value.retry_after == pytest.approx(7200, abs=5)
    assert stamp in str(caught.value)


def test_sending_limit_as_403_with_retry_after_text_is_daily_limit(fake, transport):
    fake.fail_next(403, "userRateLimitExceeded",
                   "User-rate limit exceeded. Retry after 2000-01-01T00:00:00.000Z")
    with pytest.raises(SendError) as caught:
        transport.send(message())
    assert (caught.value.kind, caught.value.retry_after) == ("daily_limit", 0.0)


def test_5xx_after_storing_is_in_doubt_and_found_by_message_id(fake, transport):
    msg = message()
    fake.fail_next(503, store_anyway=True)
    with pytest.raises(SendError) as caught:
        transport.send(msg)
    assert caught.value.kind == "in_doubt" and "may have been sent" in str(caught.value)
    assert transport.find_by_message_id(SENDER, msg.message_id) == fake.sent[0].id
    assert transport.find_by_message_id(SENDER, msg.message_id.strip("<>")) == fake.sent[0].id
    assert transport.find_by_message_id(SENDER, "<nope@example.com>") is None
    assert "q=rfc822msgid%3A" + msg.message_id.strip("<>").replace("@", "%40") in \
        [p for m, p, s in fake.requests if m == "GET"][0]


def test_find_is_per_mailbox(fake, transport, creds):
    fake.add_account("other@example.com")
    creds.info["other@example.com"] = fake.authorized_user_info("other@example.com")
    msg = message()
    transport.send(msg)
    assert transport.find_by_message_id("other@example.com", msg.message_id) is None
    assert transport.find_by_message_id(SENDER, msg.message_id) is not None


def test_expired_access_token_is_refreshed_after_401_and_saved(fake, transport, creds):
    old = creds.info[SENDER]["token"]
    transport.send(message())
    fake.expire_tokens(SENDER)
    transport.send(message(recipient_id=2))
    assert fake.count() == 2
    assert paths(fake)[1:] == [("POST", "/gmail/v1/users/me/messages/send", 401),
                               ("POST", "/token", 200),
                               ("POST", "/gmail/v1/users/me/messages/send", 200)]
    assert len(creds.saved) == 1 and creds.saved[0][1] not in (None, old)
    assert creds.info[SENDER]["token"] == creds.saved[0][1]


def test_token_about_to_expire_is_refreshed_before_sending(fake, transport, creds):
    # 4.5 min: google-auth itself would only refresh within 3 min 45 s of expiry
    soon = datetime.now(UTC) + timedelta(minutes=4, seconds=30)
    creds.info[SENDER]["expiry"] = soon.isoformat()
    transport.send(message())
    assert paths(fake) == [("POST", "/token", 200),
                           ("POST", "/gmail/v1/users/me/messages/send", 200)]
    assert len(creds.saved) == 1
    saved_expiry = datetime.fromisoformat(creds.info[SENDER]["expiry"])
    assert saved_expiry > datetime.now(UTC) + timedelta(minutes=50)


def test_401_that_persists_is_sender_auth(fake, transport):
    fake.fail_next(401, "authError", "Invalid Credentials", count=3)
    with pytest.raises(SendError) as caught:
        transport.send(message())
    assert (caught.value.kind, caught.value.error_code) == ("sender_auth", "gmail_401")
    # AuthorizedHttp refreshes and retries twice by itself: three sends, two refreshes
    assert [p for _, p, _ in paths(fake)].count("/token") == 2
    assert [p for _, p, _ in paths(fake)].count("/gmail/v1/users/me/messages/send") == 3


def test_revoked_grant_is_sender_auth_and_credentials_are_reloaded(fake, transport, creds):
    fake.revoke(SENDER)
    with pytest.raises(SendError) as caught:
        transport.send(message())
    assert (caught.value.kind, caught.value.error_code) == ("sender_auth", "auth_revoked")
    assert "invalid_grant" in str(caught.value) and SENDER in str(caught.value)
    assert fake.count() == 0
    # the operator re-authorizes: the transport asks the provider again
    fake.add_account(SENDER)
    creds.info[SENDER] = fake.authorized_user_info(SENDER)
    assert transport.send(message()).provider_id == fake.sent[0].id


def test_revoked_grant_found_by_proactive_refresh_sends_nothing(fake, transport, creds):
    creds.info[SENDER] = fake.authorized_user_info(SENDER, token=False)
    fake.revoke(SENDER)
    with pytest.raises(SendError) as caught:
        transport.send(message())
    assert caught.value.kind == "sender_auth"
    assert paths(fake) == [("POST", "/token", 400)]


def test_missing_credentials_and_provider_errors(fake, creds):
    class Broken(MemoryCredentials):
        def get(self, sender_email):
            raise ConnectionError("database is down")

    t = GmailTransport(Broken(), api_endpoint=fake.url)
    with pytest.raises(SendError) as caught:
        t.send(message())
    assert (caught.value.kind, caught.value.error_code) == ("transient", "credentials_unavailable")


def test_failed_token_save_does_not_fail_the_send(fake, transport, creds, caplog):
    creds.fail_save = True
    fake.expire_tokens(SENDER)
    assert transport.send(message()).provider_id == fake.sent[0].id
    assert "could not store the refreshed access token" in caplog.text


def test_hang_longer_than_timeout_is_in_doubt_timeout(fake, creds):
    t = GmailTransport(creds, api_endpoint=fake.url, timeout=1)
    t.send(message())                    # a kept-alive connection exists
    fake.hang_next(4)
    started = time.monotonic()
    with pytest.raises(SendError) as caught:
        t.send(message(recipient_id=2))
    assert time.monotonic() - started < 3
    assert (caught.value.kind, caught.value.error_code) == ("in_doubt", "timeout")
    assert t.send(message(recipient_id=3)).provider_id   # a fresh connection works
    t.close()


def test_connection_refused_is_transient(creds):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = GmailTransport(creds, api_endpoint=f"http://127.0.0.1:{port}/", timeout=2)
    with pytest.raises(SendError) as caught:
        t.send(message())
    assert (caught.value.kind, caught.value.error_code) == ("transient", "connection_error")


def test_large_message_goes_through_media_upload(fake, transport):
    big = "".join(f"<p>line {i} " + "x" * 90 + "</p>\n" for i in range(60_000))   # ~6 MB
    msg = message(html=big)
    assert len(msg.raw) > 5 * 1024 * 1024
    result = transport.send(msg)
    assert fake.sent[0].raw == msg.raw and result.provider_id == fake.sent[0].id
    # a resumable session: a POST opens it, one PUT carries the whole message
    (opened, method, status), (put, path, put_status) = fake.requests[0], fake.requests[1]
    assert (opened, method, put) == ("POST", fake.requests[0][1], "PUT")
    assert method.startswith("/upload/gmail/v1/users/me/messages/send?")
    assert "uploadType=resumable" in method and status == 200 and put_status == 200
    assert "upload_id=" in path
    assert fake.uploads == [{"protocol": "resumable", "size": len(msg.raw),
                             "content_type": "message/rfc822"}]
    # the JSON path refuses it (as Gmail does), which is why the upload path exists
    t = GmailTransport(MemoryCredentials(), api_endpoint=fake.url, media_threshold=10**9)
    t.provider.info[SENDER] = fake.authorized_user_info(SENDER)
    with pytest.raises(SendError) as caught:
        t.send(msg)
    assert (caught.value.kind, caught.value.error_code) == ("permanent", "message_too_large")


def test_message_over_35_mb_is_refused_without_a_request(fake, transport):
    raw = b"Subject: x\r\n\r\n" + b"x" * (36 * 1024 * 1024)
    with pytest.raises(SendError) as caught:
        transport.send(OutgoingMessage(1, 1, SENDER, "a@example.org", "<a@b>", raw))
    assert caught.value.error_code == "message_too_large" and fake.requests == []


def test_fake_accepts_multipart_upload_from_the_real_client(fake):
    """Not used by the transport, but the fake handles what the client sends with a body."""
    creds = Credentials(token=fake.issue_token(SENDER))
    service = build("gmail", "v1", credentials=creds, static_discovery=True,
                    cache_discovery=False, client_options={"api_endpoint": fake.url})
    raw = message().raw
    request = service.users().messages().send(
        userId="me", body={"threadId": "t1"},
        media_body=MediaIoBaseUpload(io.BytesIO(raw), mimetype="message/rfc822"))
    assert request.uri.startswith("https://")    # the client's quirk the transport fixes
    request.uri = "http://" + request.uri.split("://", 1)[1]
    request.execute(http=google_auth_httplib2.AuthorizedHttp(creds, http=httplib2.Http(timeout=5)))
    assert "uploadType=multipart" in fake.requests[0][1] and fake.sent[0].raw == raw


def test_credentials_info_round_trip_keeps_token_uri():
    info = {"token": "at", "refresh_token": "rt", "token_uri": "http://127.0.0.1:1/token",
            "client_id": "cid", "client_secret": "cs", "scopes": "a b",
            "expiry": "2030-01-02T03:04:05Z"}
    creds = credentials_from_info(info)
    assert creds.token_uri == "http://127.0.0.1:1/token" and creds.scopes == ["a", "b"]
    assert creds.expiry == datetime(2030, 1, 2, 3, 4, 5)           # naive UTC
    back = credentials_to_info(creds)
    assert back == {**info, "scopes": ["a", "b"], "expiry": "2030-01-02T03:04:05Z"}
    assert credentials_from_info(info, "http://x/token").token_uri == "http://x/token"
    assert credentials_from_info({**info, "expiry": "2030-01-02T05:04:05+02:00"}).expiry == \
        datetime(2030, 1, 2, 3, 4, 5)


def test_classify_non_json_bad_gateway_and_retry_after_date():
    resp = httplib2.Response({"status": 502, "retry-after": "120"})
    resp.reason = "Bad Gateway"
    error = classify_http_error(HttpError(resp, b"<html>502 Bad Gateway</html>"))
    assert (error.kind, error.error_code, error.retry_after) == ("in_doubt", "gmail_5xx", 120.0)
    assert "502" in str(error) and "Bad Gateway" in str(error)
    later = datetime.now(UTC) + timedelta(seconds=90)
    later = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert retry_after_from_header(later) == pytest.approx(90, abs=2)
    assert retry_after_from_header("soon") is None
