"""Sending through the Gmail API (users.messages.send) with each sender's OAuth credentials.

One GmailTransport per sending thread: it caches, per sender, the credentials, a gmail
`service` and an `AuthorizedHttp` over its own `httplib2.Http` (httplib2 is not thread-safe).
The client never retries (`num_retries=0`): retrying is the runner's decision. Every failure
becomes a SendError whose kind says what the runner should do (see transport_base) and whose
text says what happened, e.g. "Gmail 400 invalidArgument: Invalid To header".

Access tokens are refreshed 5 minutes before they expire; a refreshed token (ours, or the one
AuthorizedHttp gets itself after a 401) is handed to the credentials provider to store.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import random
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import google_auth_httplib2
import httplib2
from google.auth.exceptions import RefreshError, TransportError
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError, MediaUploadSizeError
from googleapiclient.http import MediaIoBaseUpload

from mailjobs.transports.base import OutgoingMessage, SendError, SendResult
from mailjobs.transports.learned_limits import GMAIL, GateBusy, SenderGate

log = logging.getLogger("mailjobs.transport.gmail")

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
MAX_UPLOAD_BYTES = 36_700_160            # messages.send media maxSize (35 MiB)
DEFAULT_MEDIA_THRESHOLD = 4 * 1024 * 1024
REFRESH_MARGIN = timedelta(minutes=5)
_RETRY_AFTER_TEXT = re.compile(
    r"retry after (\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?)", re.I)
_RATE_REASONS = {"ratelimitexceeded", "userratelimitexceeded"}
_NETWORK_ERRORS = (OSError, httplib2.HttpLib2Error, http.client.HTTPException)
GATE_WAIT = 10.0            # seconds a send waits for its sender's concurrency cap (gmail_busy)
BUSY_RETRY = 5.0            # retry_after of gmail_busy
REFUSED_RETRY = (0.5, 1.5)  # retry_after (uniform random) of a concurrent-request refusal


class CredentialsProvider(Protocol):
    def get(self, sender_email: str) -> Credentials: ...

    def save(self, sender_email: str, creds: Credentials) -> None: ...


# -- credentials <-> JSON-safe dict ------------------------------------------------------------
def _utc_naive(value: str | None) -> datetime | None:
    """google-auth wants expiry as a naive UTC datetime."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def credentials_from_info(info: dict[str, Any], token_uri_override: str | None = None
                          ) -> Credentials:
    """Credentials from stored authorized-user info. Unlike `from_authorized_user_info`, this
    keeps the stored (or overriding) token_uri, so tests can refresh against a fake server."""
    scopes = info.get("scopes")
    if isinstance(scopes, str):
        scopes = scopes.split()
    # google-auth ships py.typed but leaves its functions unannotated: the calls below are
    # untyped by the library, not by us
    return Credentials(  # type: ignore[no-untyped-call]
        token=info.get("token"), refresh_token=info.get("refresh_token"),
        token_uri=token_uri_override or info.get("token_uri") or GOOGLE_TOKEN_URI,
        client_id=info.get("client_id"), client_secret=info.get("client_secret"),
        scopes=scopes, expiry=_utc_naive(info.get("expiry")))


def credentials_to_info(creds: Credentials) -> dict[str, Any]:
    """JSON-safe authorized-user info (the shape of Credentials.to_json, expiry ISO UTC)."""
    return {"token": creds.token, "refresh_token": creds.refresh_token,
            "token_uri": creds.token_uri, "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "scopes": list(creds.scopes) if creds.scopes else None,
            "expiry": creds.expiry.isoformat() + "Z" if creds.expiry else None}


def delegated_credentials(stored: dict[str, Any], sender: str,
                          token_uri_override: str | None = None) -> Any:
    """Credentials of a service account acting as `sender` (domain-wide delegation): the JWT
    bearer grant, signed with the stored key, `sub` = sender, to GMAIL_TOKEN_URI when set."""
    from google.oauth2 import service_account

    creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        stored["service_account"], scopes=stored["scopes"], subject=sender)
    return creds.with_token_uri(token_uri_override) if token_uri_override else creds


def is_delegated(creds: Any) -> bool:
    from google.oauth2 import service_account

    return isinstance(creds, service_account.Credentials)


# -- classifying errors ------------------------------------------------------------------------
def _google_error(exc: HttpError) -> tuple[str | None, str]:
    """Google's machine reason (e.g. rateLimitExceeded) and human message of an HttpError."""
    try:
        error = json.loads(exc.content).get("error")
    except (ValueError, AttributeError):
        error = None
    reason = None
    if isinstance(error, dict):
        errors = error.get("errors") or []
        if errors and isinstance(errors[0], dict):
            reason = errors[0].get("reason")
        for detail in error.get("details") or []:
            if not reason and isinstance(detail, dict) and detail.get("reason"):
                reason = detail["reason"]      # google.rpc.ErrorInfo form
        reason = reason or error.get("status")
    text = exc.reason or exc.resp.reason or ""
    if not isinstance(error, dict) and exc.content:   # not JSON: an HTML page from a proxy...
        text = f"{text} {exc.content[:200].decode('utf-8', 'replace')}".strip()
    return reason, text


def _seconds_until(moment: datetime, now: datetime | None = None) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def retry_after_from_text(text: str, now: datetime | None = None) -> float | None:
    """Seconds until the time in Gmail's "Retry after 2026-01-01T10:00:00.000Z" text."""
    match = _RETRY_AFTER_TEXT.search(text or "")
    if match is None:
        return None
    try:
        return _seconds_until(datetime.fromisoformat(match.group(1)), now)
    except ValueError:
        return None


def retry_after_from_header(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return _seconds_until(parsedate_to_datetime(value))
    except (TypeError, ValueError):
        return None


def classify_http_error(exc: HttpError) -> SendError:
    """The SendError for a Gmail API error answer (see FACTS.md for the table)."""
    status = exc.resp.status
    reason, text = _google_error(exc)
    norm = (reason or "").replace("_", "").lower()
    detail = f"Gmail {status} {reason}: {text}" if reason else f"Gmail {status}: {text}"
    header_wait = retry_after_from_header(exc.resp.get("retry-after"))
    text_wait = retry_after_from_text(text)

    def error(kind: str, code: str, hint: str = "", wait: float | None = None) -> SendError:
        # a rate refusal is not an attempt: the request was refused, nothing was sent
        return SendError(kind, code, f"{detail}{hint}", retry_after=wait, status=status,
                         attempted=kind != "rate")

    if status == 400 and norm == "failedprecondition":
        return error("sender_config", "sender_config", " (the sender's account cannot send "
                     "through the API, e.g. Gmail is not enabled for it; fix it, then resume)")
    lowered = text.lower()
    if status == 413 or (status == 400 and ("exceeds the limit" in lowered
                                            or "too large" in lowered)):
        return error("permanent", "message_too_large")
    if status == 400:
        return error("permanent", "gmail_400")
    if status == 401:
        return error("sender_auth", "gmail_401", " (the access token was refused even after a "
                     "refresh; re-authorize the sender)")
    if status in (403, 429) and text_wait is not None:
        return error("daily_limit", "daily_limit", " (sending limit: the sender is deferred "
                     "until then)", text_wait)
    if status == 403 and norm in _RATE_REASONS:
        return error("rate", "rate_limited", "", header_wait)
    if status == 403 and norm == "dailylimitexceeded":
        return error("daily_limit", "daily_limit", " (the Google Cloud project's daily API "
                     "quota is used up)", header_wait)
    if status == 403:
        return error("sender_config", "gmail_403", " (a person must fix the sender's account, "
                     "delegation or the project's API access, then resume the sender)")
    if status == 429 and "user-rate limit exceeded" in lowered:
        return error("daily_limit", "daily_limit", " (the sender's daily sending limit)",
                     header_wait)
    if status == 429 and "concurrent" in lowered:
        return error("rate", "gmail_concurrent", "", header_wait)
    if status == 429:
        return error("rate", "gmail_429", "", header_wait)
    if status == 408:
        return error("in_doubt", "timeout", " (may have been sent)")
    if status >= 500:
        return error("in_doubt", "gmail_5xx", " (may have been sent)", header_wait)
    if 400 <= status < 500:
        return error("sender_config", f"gmail_{status}", " (unexpected answer; check the Gmail "
                     "API endpoint and the sender's setup)")
    return error("in_doubt", f"gmail_{status}", " (unexpected answer; may have been sent)")


def _refresh_error(sender: str, exc: RefreshError, creds: Any = None) -> SendError:
    text = str(exc.args[0]) if exc.args else str(exc)
    if is_delegated(creds) and ("unauthorized_client" in text or "invalid_grant" in text
                                or "access_denied" in text):
        account = creds.service_account_email
        return SendError(
            "sender_auth", "delegation_denied",
            f"Google refused the service account {account} acting as {sender} ({text}): "
            f"domain-wide delegation is not granted for its client ID and these scopes "
            f"({' '.join(creds.scopes or [])}), or the key or the user is gone; fix it in the "
            "Admin console (Security > API controls > Domain-wide delegation), then run "
            "`mailjobs auth` with the key again to resume the sender's jobs")
    if "invalid_grant" in text:
        return SendError("sender_auth", "auth_revoked", f"the OAuth grant of {sender} is revoked "
                         f"or expired ({text}); re-authorize the sender, then resume it")
    if exc.retryable:
        return SendError("transient", "connection_error",
                         f"the token endpoint failed to refresh the access token of {sender} "
                         f"({text}); will retry")
    return SendError("sender_auth", "auth_failed", f"the access token of {sender} cannot be "
                     f"refreshed ({text}); check the OAuth client and re-authorize the sender")


def _network_error(exc: BaseException, what: str, sent_maybe: bool) -> SendError:
    """A SendError for an error below HTTP: timeouts, resets, DNS, TLS."""
    if isinstance(exc, TimeoutError):
        code = "timeout"
    else:
        code = "connection_error"
    surely_unsent = isinstance(exc, (ConnectionRefusedError, httplib2.ServerNotFoundError))
    kind = "in_doubt" if sent_maybe and not surely_unsent else "transient"
    hint = " (may have been sent)" if kind == "in_doubt" else ""
    return SendError(kind, code, f"{what} failed: {type(exc).__name__}: {exc}{hint}")


class SendOnceHttp(httplib2.Http):
    """httplib2.Http that sends a non-idempotent request (POST: messages.send) exactly once.

    httplib2 re-sends any request, POST included, when a kept-alive connection closes before
    the status line: for messages.send that is a second email which nobody sees (the client
    gets the second answer). Here such a failure is raised instead, so the send is in doubt and
    IN_DOUBT_POLICY decides. GET and HEAD keep httplib2's own retries.
    """

    def _conn_request(self, conn: http.client.HTTPConnection, request_uri: str, method: str,
                      body: str | bytes | None, headers: dict[str, str]
                      ) -> tuple[httplib2.Response, bytes]:  # noqa: D401
        # httplib2 publishes no types: its answers are typed here
        if method in ("GET", "HEAD"):
            kept: tuple[httplib2.Response, bytes] = super()._conn_request(
                conn, request_uri, method, body, headers)
            return kept
        try:
            if conn.sock is None:
                conn.connect()
            conn.request(method, request_uri, body, headers)
            response = conn.getresponse()
        except socket.gaierror:
            conn.close()
            raise httplib2.ServerNotFoundError(
                f"Unable to find the server at {conn.host}") from None
        except (OSError, http.client.HTTPException):
            conn.close()
            raise
        content = response.read()
        answer = httplib2.Response(response)
        decoded: bytes = httplib2._decompressContent(answer, content, self.limit_kwargs)
        return answer, decoded


# -- the transport -----------------------------------------------------------------------------
@dataclass
class _Session:
    creds: Credentials
    http: google_auth_httplib2.AuthorizedHttp
    service: Any
    # users().messages() built once: building it costs ~1 ms of CPU (14 methods) per call.
    messages: Any = None

    def __post_init__(self) -> None:
        if self.messages is None:
            self.messages = self.service.users().messages()


class GmailTransport:
    name = "gmail"

    def __init__(self, credentials_provider: CredentialsProvider, *,
                 api_endpoint: str | None = None, timeout: float = 30.0,
                 media_threshold: int = DEFAULT_MEDIA_THRESHOLD,
                 gate: SenderGate | None = None, gate_wait: float | None = None) -> None:
        self.provider = credentials_provider
        self.gate = gate
        self.gate_wait = gate_wait
        self.api_endpoint = api_endpoint
        self.timeout = timeout
        self.media_threshold = media_threshold
        self._sessions: dict[str, _Session] = {}

    # -- public --------------------------------------------------------------------------------
    def send(self, msg: OutgoingMessage) -> SendResult:
        size = len(msg.raw)
        if size > MAX_UPLOAD_BYTES:
            raise SendError("permanent", "message_too_large", f"the message is {size:,} bytes; "
                            f"Gmail accepts at most {MAX_UPLOAD_BYTES:,}")
        if size <= self.media_threshold:
            payload = {"body": {"raw": base64.urlsafe_b64encode(msg.raw).decode("ascii")}}
        else:   # the JSON body is refused somewhere above 1-6 MB; upload takes up to 35 MiB,
            # through a resumable session (one PUT of the whole message: the chunk size is the
            # client's default, 100 MB)
            payload = {"media_body": MediaIoBaseUpload(io.BytesIO(msg.raw),
                                                       mimetype="message/rfc822", resumable=True)}
        if self.gate is None:
            return self._send(msg, payload)
        sender = msg.sender_email
        try:
            ticket = self.gate.enter(sender,
                                     GATE_WAIT if self.gate_wait is None else self.gate_wait)
        except GateBusy:
            cap = self.gate.limits.cap(GMAIL, sender)
            raise SendError("rate", "gmail_busy", f"{cap} sends of {sender} are in flight "
                            f"(its concurrency cap); not sent, retrying",
                            retry_after=BUSY_RETRY, attempted=False) from None
        try:
            result = self._send(msg, payload)
        except SendError as exc:
            if exc.error_code == "gmail_concurrent":
                raise self._refused(sender, ticket.peak - 1, exc) from exc
            raise
        finally:
            self.gate.leave(ticket)
        self.gate.limits.succeeded(GMAIL, sender)
        return result

    def _send(self, msg: OutgoingMessage, payload: dict[str, Any]) -> SendResult:
        response = self._call(
            msg.sender_email,
            lambda messages: messages.send(userId="me", **payload),
            f"sending to {msg.to_email}", True)
        return SendResult(provider_id=response.get("id"))

    def _refused(self, sender: str, others: int, exc: SendError) -> SendError:
        """Gmail refused a concurrent request: the sender's cap is lowered (for every runner)
        to the most sends of this process that were in flight besides this one while it was
        (an upper bound of what Gmail saw: one too many is corrected by the next refusal)."""
        assert self.gate is not None
        cap = self.gate.limits.refused(GMAIL, sender, others, exc.message)
        return SendError(exc.kind, exc.error_code, f"{exc.message}; {others} other send(s) of "
                         f"{sender} were in flight, cap now {cap}; not sent, retrying",
                         retry_after=exc.retry_after or random.uniform(*REFUSED_RETRY),
                         status=exc.status, attempted=False)

    def find_by_message_id(self, sender_email: str, message_id: str) -> str | None:
        query = f"rfc822msgid:{message_id.strip().strip('<>')}"
        response = self._call(
            sender_email, lambda messages: messages.list(
                userId="me", q=query, maxResults=1, includeSpamTrash=True),
            f"looking up {message_id}", False)
        messages = response.get("messages") or []
        return messages[0]["id"] if messages else None

    # -- reading the mailbox (bounce checks; needs gmail.readonly) ------------------------------
    def list_message_ids(self, sender_email: str, query: str, limit: int = 2000) -> list[str]:
        """Ids of the sender's messages that match a Gmail search, newest first."""
        ids: list[str] = []
        page: dict[str, str] = {}
        while len(ids) < limit:
            response = self._call(
                sender_email, lambda messages: messages.list(
                    userId="me", q=query, maxResults=min(500, limit - len(ids)), **page),  # noqa: B023
                f"searching the mailbox ({query})", False)
            ids += [m["id"] for m in response.get("messages") or []]
            if not response.get("nextPageToken"):
                break
            page = {"pageToken": response["nextPageToken"]}
        return ids

    def get_raw(self, sender_email: str, gmail_id: str) -> bytes:
        """The RFC 822 bytes of one message of the sender's mailbox."""
        response = self._call(
            sender_email, lambda messages: messages.get(
                userId="me", id=gmail_id, format="raw"), f"reading message {gmail_id}", False)
        raw = response.get("raw") or ""
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))

    # -- the addresses the account may send as (needs gmail.settings.basic) ---------------------
    def send_as_list(self, sender_email: str) -> list[dict[str, Any]]:
        """users.settings.sendAs.list of the sender's account: [{"sendAsEmail", "isPrimary",
        "verificationStatus", ...}] (raises SendError, e.g. 403 without the scope)."""
        session = self._session(sender_email)
        response = self._call(
            sender_email, lambda _messages: session.service.users().settings().sendAs().list(
                userId="me"), "reading the send-as addresses", False)
        return [entry for entry in response.get("sendAs") or [] if isinstance(entry, dict)]

    def close(self) -> None:
        for session in self._sessions.values():
            session.http.close()
        self._sessions.clear()

    # -- internals -----------------------------------------------------------------------------
    def _session(self, sender: str) -> _Session:
        session = self._sessions.get(sender)
        if session is not None:
            return session
        try:
            creds = self.provider.get(sender)
        except SendError:
            raise
        except Exception as exc:  # e.g. the database is down: not the recipient's fault
            raise SendError("transient", "credentials_unavailable", f"could not load the "
                            f"credentials of {sender}: {type(exc).__name__}: {exc}") from exc
        http = SendOnceHttp(timeout=self.timeout)
        authed = google_auth_httplib2.AuthorizedHttp(creds, http=http)
        options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
        service = build("gmail", "v1", credentials=creds, static_discovery=True,
                        cache_discovery=False, client_options=options)
        session = self._sessions[sender] = _Session(creds, authed, service)
        return session

    def _call(self, sender: str, make: Callable[[Any], Any], what: str,
              sent_maybe: bool) -> dict[str, Any]:
        session = self._session(sender)
        token = session.creds.token
        try:
            self._refresh_if_due(sender, session)
            return self._execute(sender, session, make, what, sent_maybe)
        except SendError as exc:
            if exc.kind == "sender_auth":   # next time, ask the provider again (re-authorized?)
                self._sessions.pop(sender, None)
                session.http.close()
            raise
        finally:
            if session.creds.token != token:
                self._save(sender, session.creds)

    def _refresh_if_due(self, sender: str, session: _Session) -> None:
        creds = session.creds
        now = datetime.now(UTC).replace(tzinfo=None)
        if creds.token and (creds.expiry is None or creds.expiry - now > REFRESH_MARGIN):
            return
        try:
            creds.refresh(  # type: ignore[no-untyped-call]  # google-auth: unannotated
                google_auth_httplib2.Request(session.http.http))
        except RefreshError as exc:
            raise _refresh_error(sender, exc, session.creds) from exc
        except (TransportError, *_NETWORK_ERRORS) as exc:
            session.http.close()
            raise _network_error(exc, f"refreshing the access token of {sender}", False) from exc
        log.debug("refreshed the access token of %s", sender)

    def _execute(self, sender: str, session: _Session, make: Callable[[Any], Any], what: str,
                 sent_maybe: bool) -> dict[str, Any]:
        try:
            request = make(session.messages)
            self._fix_upload_scheme(request)
            # googleapiclient publishes no types: an API answer is a JSON object
            response: dict[str, Any] = request.execute(http=session.http, num_retries=0)
            return response
        except HttpError as exc:
            raise classify_http_error(exc) from exc
        except MediaUploadSizeError as exc:
            raise SendError("permanent", "message_too_large", f"Gmail refuses the message as "
                            f"too large: {exc}") from exc
        except RefreshError as exc:     # AuthorizedHttp's refresh after a 401
            raise _refresh_error(sender, exc, session.creds) from exc
        except TransportError as exc:   # network trouble during that refresh: not sent
            session.http.close()
            raise _network_error(exc, f"refreshing the access token of {sender}", False) from exc
        except _NETWORK_ERRORS as exc:
            session.http.close()        # never reuse a connection in an unknown state
            raise _network_error(exc, f"Gmail API call ({what})", sent_maybe) from exc

    def _fix_upload_scheme(self, request: Any) -> None:
        """The client builds media-upload URLs from the discovery document's https rootUrl and
        only swaps the host for `api_endpoint`; keep the endpoint's scheme (http for fakes)."""
        if not self.api_endpoint or "://" not in self.api_endpoint:
            return
        scheme = self.api_endpoint.split("://", 1)[0]
        current, rest = request.uri.split("://", 1)
        if current != scheme:
            request.uri = f"{scheme}://{rest}"

    def _save(self, sender: str, creds: Credentials) -> None:
        """Store a refreshed token. A failure must not turn a sent message into an error: the
        token stays in memory and the refresh token (unchanged) still works, so log it."""
        try:
            self.provider.save(sender, creds)
        except Exception:
            log.exception("could not store the refreshed access token of %s", sender)
