"""A fake Gmail API and OAuth token server, for tests that drive the real google client.

    with FakeGmail() as fake:
        fake.add_account("ops@example.com")
        info = fake.authorized_user_info("ops@example.com")  # token, refresh_token, token_uri...
        # build("gmail", "v1", ..., client_options={"api_endpoint": fake.url})

Serves messages.send (JSON `raw`, and /upload/ with uploadType=media, multipart or resumable:
a POST that opens an upload session answered with its Location, then PUTs of the bytes with
Content-Range, checked against the announced X-Upload-Content-Length and -Type; `uploads`
records each upload's protocol, size and media type),
messages.list (`q=rfc822msgid:...`, or a small part of Gmail's search syntax: see _SearchQuery),
messages.get, and `POST /token` (refresh_token grant, and the JWT bearer grant of a service
account with domain-wide delegation: `add_service_account()` registers its public key, the
domains and scopes granted to it; the assertion's RS256 signature, iss, aud, exp, sub and scope
are verified, and `jwt_grants` records what was accepted). `deliver()` puts received mail (e.g.
DSNs for bounce tests) into a mailbox.
The bearer token picks the mailbox. Failures are scripted per send call with `fail_next` and
`hang_next`; answers use Gmail's JSON error shape. Runs on 127.0.0.1, port 0, daemon threads.

For fault tests: `fail_randomly({429: 0.3, 500: 0.1}, seconds=60)` fails that share of sends for
a while; `drop_next()` stores a message and then closes the connection without an HTTP answer
(the mail went out, the client sees a network error); `send_latency` makes every send take that
long; `send_log` records every send attempt as (account, To address, status, time.time()); status 0
is a dropped connection.
"""
from __future__ import annotations

import base64
import binascii
import email
import email.parser
import email.policy
import json
import random
import re
import secrets
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SCOPES = ["https://www.googleapis.com/auth/gmail.send",
          "https://www.googleapis.com/auth/gmail.readonly",
          "https://www.googleapis.com/auth/gmail.settings.basic"]
# scopes that may read users.settings.sendAs (any one of them)
SETTINGS_READ_SCOPES = {"https://www.googleapis.com/auth/gmail.readonly",
                        "https://www.googleapis.com/auth/gmail.settings.basic",
                        "https://www.googleapis.com/auth/gmail.modify",
                        "https://mail.google.com/"}
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
          404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE",
          503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
DEFAULT_ERROR = {400: ("invalidArgument", "Invalid To header"),
                 403: ("rateLimitExceeded", "Rate Limit Exceeded"),
                 429: ("rateLimitExceeded", "Too many concurrent requests for user"),
                 500: ("backendError", "Backend Error"),
                 503: ("backendError", "The service is currently unavailable.")}
ROUTE = re.compile(r"/(upload/)?gmail/v1/users/([^/]+)/messages(?:/([^/]+))?\Z")
SEND_AS_ROUTE = re.compile(r"/gmail/v1/users/([^/]+)/settings/sendAs\Z")


def error_body(status: int, reason: str, message: str) -> dict:
    domain = "usageLimits" if "Limit" in reason else "global"
    return {"error": {"code": status, "message": message, "status": STATUS.get(status, "UNKNOWN"),
                      "errors": [{"domain": domain, "reason": reason, "message": message}]}}


@dataclass
class Sent:
    account: str
    id: str
    thread_id: str
    raw: bytes
    time: float
    labels: tuple[str, ...] = ("SENT",)   # ("INBOX",) for mail put in with deliver()
    _parsed: EmailMessage | None = field(default=None, repr=False, compare=False)
    _headers: email.message.Message | None = field(default=None, repr=False, compare=False)

    @property
    def message(self) -> EmailMessage:
        """The message parsed, on first use only: parsing every send costs the fake ~3 ms of
        CPU, which benchmarks on 2 cores would otherwise count against the runner."""
        if self._parsed is None:
            self._parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        return self._parsed

    def header(self, name: str) -> str:
        """One header as text, read leniently (compat32, headers only), as Gmail's search reads
        anything anyone mails: a received message with a broken MIME part never fails it."""
        if self._headers is None:   # parsed once: the raw message never changes
            self._headers = email.parser.BytesHeaderParser(
                policy=email.policy.compat32).parsebytes(self.raw)
        return str(self._headers.get(name) or "")

    @property
    def message_id(self) -> str:
        """The Message-ID without its angle brackets, as an rfc822msgid: search names it."""
        return self.header("Message-ID").strip().strip("<>")


@dataclass
class Rule:
    status: int | None          # None: answer normally (after `delay`)
    reason: str | None
    message: str | None
    headers: dict[str, str]
    remaining: int
    email: str | None
    store_anyway: bool = False
    delay: float = 0.0
    drop: str | None = None     # "close" (FIN) or "reset" (RST): no HTTP answer at all


@dataclass
class Storm:
    """Random failures: each send fails with status s with probability rates[s]."""
    rates: dict[int, float]
    until: float                # time.monotonic() deadline
    email: str | None
    rng: random.Random
    store_anyway: bool = False
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)   # status -> reason, text


@dataclass
class DelegatedClient:
    """A service account and the domain-wide delegation a Workspace admin granted it."""
    client_email: str
    public_key: object          # cryptography RSAPublicKey
    domains: set[str]
    scopes: set[str]
    revoked: bool = False


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# google-auth signs every service-account assertion for Google's own token endpoint (its `aud`
# is this constant, whatever token_uri the request goes to); Google checks it, so the fake does.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
UNAUTHORIZED_CLIENT = ("Client is unauthorized to retrieve access tokens using this method, or "
                       "client not authorized for any of the scopes requested.")


@dataclass
class Account:
    email: str
    refresh_token: str
    revoked: bool = False
    mailbox: list[Sent] = field(default_factory=list)
    # Gmail finds a message by id or by rfc822msgid: in constant time, and so does the fake: a
    # scan of the mailbox (a header parse per message, under the fake's lock) took ~0.1 s at
    # 3,000 sent, so every in-doubt lookup of a big job stalled all the fake's sends, which then
    # timed out, were in doubt and were looked up in turn, until the job auto-paused.
    by_id: dict[str, Sent] = field(default_factory=dict)
    by_message_id: dict[str, list[Sent]] = field(default_factory=dict)
    # "Send mail as" aliases: sendAsEmail -> verificationStatus ("accepted", "pending")
    aliases: dict[str, str] = field(default_factory=dict)
    scopes: list[str] = field(default_factory=lambda: list(SCOPES))   # granted at consent

    def put(self, record: Sent, message_id: str) -> None:
        """Add a message (under the fake's lock; `message_id` read before taking it)."""
        self.mailbox.append(record)
        self.by_id[record.id] = record
        self.by_message_id.setdefault(message_id, []).append(record)

    def clear(self) -> None:
        self.mailbox.clear()
        self.by_id.clear()
        self.by_message_id.clear()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver listens with a backlog of 5: two dozen runner threads connecting at once
    # (three workers after a pause) overflowed it, and a dropped SYN is resent after 1 s, 3 s...
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up: fine
            super().handle_error(request, client_address)


class FakeGmail:
    client_id = "fake-client.apps.googleusercontent.com"
    client_secret = "fake-secret"

    def __init__(self, token_lifetime: int = 3600, max_json_body: int = 5 * 1024 * 1024) -> None:
        self.token_lifetime = token_lifetime
        self.max_json_body = max_json_body   # bigger JSON sends get Google's "payload size" 400
        self.sent: list[Sent] = []
        self.requests: list[tuple[str, str, int]] = []
        self.max_concurrent: dict[str, int] = {}
        # account -> sends answered at once; more get Gmail's 429 "Too many concurrent requests"
        self.concurrency_limit: dict[str, int] = {}
        self.refused_concurrent = 0
        self._accounts: dict[str, Account] = {}
        self._delegated: dict[str, DelegatedClient] = {}   # client_email -> its delegation
        self.jwt_grants: list[dict] = []                   # claims of accepted JWT assertions
        self._tokens: dict[str, str] = {}          # access token -> account email
        self._token_scopes: dict[str, set[str]] = {}   # access token -> its scopes
        self.send_as_reads: list[str] = []         # accounts whose sendAs list was read
        self._rules: list[Rule] = []
        self._storm: Storm | None = None
        self.send_latency = 0.0                    # seconds every send takes (before storing)
        self.send_log: list[tuple[str, str, int, float]] = []  # account, To, status, time
        self.uploads: list[dict] = []   # {"protocol", "size", "content_type"} per upload send
        self._sessions: dict[str, dict] = {}   # resumable upload sessions by upload_id
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeGmail:
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True,
                         name="fake-gmail").start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeGmail:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/"

    @property
    def token_uri(self) -> str:
        return self.url + "token"

    # -- accounts and tokens ------------------------------------------------------------------
    def add_account(self, email_address: str, refresh_token: str | None = None) -> Account:
        account = Account(email_address, refresh_token or f"rt-{secrets.token_hex(8)}")
        with self._lock:
            self._accounts[email_address] = account
        return account

    def add_service_account(self, client_email: str, public_key: object, domain: str,
                            scopes: list[str] | None = None) -> DelegatedClient:
        """Domain-wide delegation granted to a service account: its key may act as any
        account of `domain` with `scopes` (default: send and readonly)."""
        client = DelegatedClient(client_email, public_key, {domain.lower()},
                                 set(scopes or SCOPES))
        with self._lock:
            self._delegated[client_email] = client
        return client

    def revoke_delegation(self, client_email: str) -> None:
        """The admin removed the grant: its JWTs answer unauthorized_client, its tokens die."""
        client = self._delegated[client_email]
        client.revoked = True
        for account in list(self._accounts):
            if account.split("@")[-1] in client.domains:
                self.expire_tokens(account)

    def issue_token(self, email_address: str, scopes: list[str] | set[str] | None = None
                    ) -> str:
        token = f"at-{secrets.token_hex(12)}"
        account = self._accounts.get(email_address)
        with self._lock:
            self._tokens[token] = email_address
            self._token_scopes[token] = set(scopes if scopes is not None else
                                            account.scopes if account else SCOPES)
        return token

    def add_alias(self, email_address: str, alias: str, status: str = "accepted") -> None:
        """A "Send mail as" address of the account (Gmail settings), verified or not."""
        self._accounts[email_address].aliases[alias] = status

    def authorized_user_info(self, email_address: str, *, token: bool = True) -> dict:
        """What an OAuth consent would have stored; `token=False` leaves no access token."""
        expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        return {"token": self.issue_token(email_address) if token else None,
                "refresh_token": self._accounts[email_address].refresh_token,
                "token_uri": self.token_uri, "client_id": self.client_id,
                "client_secret": self.client_secret, "scopes": SCOPES,
                "expiry": expiry if token else None}

    def expire_tokens(self, email_address: str) -> None:
        with self._lock:
            for token in [t for t, e in self._tokens.items() if e == email_address]:
                del self._tokens[token]

    def revoke(self, email_address: str) -> None:
        """Revoke the grant: the refresh token answers invalid_grant, access tokens die."""
        self._accounts[email_address].revoked = True
        self.expire_tokens(email_address)

    # -- scripted failures --------------------------------------------------------------------
    def fail_next(self, status: int, reason: str | None = None, message: str | None = None,
                  headers: dict[str, str] | None = None, count: int = 1,
                  email: str | None = None, store_anyway: bool = False,
                  delay: float = 0.0) -> None:
        default_reason, default_message = DEFAULT_ERROR.get(status, ("backendError", "Error"))
        with self._lock:
            self._rules.append(Rule(status, reason or default_reason, message or default_message,
                                    dict(headers or {}), count, email, store_anyway, delay))

    def hang_next(self, seconds: float, count: int = 1, email: str | None = None) -> None:
        """Sleep before answering the next send(s); the message is stored after the sleep."""
        with self._lock:
            self._rules.append(Rule(None, None, None, {}, count, email, delay=seconds))

    def drop_next(self, count: int = 1, email: str | None = None, store: bool = True,
                  reset: bool = False) -> None:
        """The next send(s) get no HTTP answer: the connection is closed (FIN, or RST with
        `reset`) after the message is stored (`store`), so it went out but the client saw an
        error."""
        with self._lock:
            self._rules.append(Rule(None, None, None, {}, count, email,
                                    store_anyway=store, drop="reset" if reset else "close"))

    def fail_randomly(self, rates: dict[int, float], seconds: float | None = None,
                      email: str | None = None, seed: int | None = None,
                      store_anyway: bool = False,
                      errors: dict[int, tuple[str, str]] | None = None) -> None:
        """From now on (for `seconds`, or until `stop_failing()`), each send that no scripted
        rule takes fails with status s with probability rates[s] (with errors[s], reason and
        message, else Gmail's default error for s)."""
        until = time.monotonic() + seconds if seconds is not None else float("inf")
        with self._lock:
            self._storm = Storm(dict(rates), until, email, random.Random(seed), store_anyway,
                                dict(errors or {}))

    def stop_failing(self) -> None:
        with self._lock:
            self._storm = None

    def _storm_status(self, account: str) -> int | None:
        with self._lock:
            storm = self._storm
            if storm is None or time.monotonic() >= storm.until or \
                    storm.email not in (None, account):
                return None
            roll = storm.rng.random()
        for status, rate in storm.rates.items():
            if roll < rate:
                return status
            roll -= rate
        return None

    def _log_send(self, account: str, raw: bytes, status: int) -> None:
        try:
            headers = BytesHeaderParser(policy=email.policy.default).parsebytes(raw)
            to = ",".join(a for _, a in getaddresses([headers["To"] or ""]))
        except Exception:  # a malformed message: log it anyway
            to = ""
        with self._lock:
            self.send_log.append((account, to.lower(), status, time.time()))

    def _take_rule(self, account: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.email in (None, account):
                    rule.remaining -= 1
                    return rule
        return None

    # -- incoming mail (bounce tests) ----------------------------------------------------------
    def deliver(self, email_address: str, raw: bytes, at: float | None = None) -> Sent:
        """Put a received message (e.g. a DSN from mailer-daemon) into an account's mailbox:
        messages.list finds it (search terms from:, after:, before:, newer_than:, OR, (), {}),
        messages.get returns it with labelIds ["INBOX"] and its internalDate (`at`, epoch
        seconds; default now). It is not in `sent`."""
        gmail_id = secrets.token_hex(8)
        record = Sent(email_address, gmail_id, gmail_id, raw,
                      time.time() if at is None else at, ("INBOX",))
        message_id = record.message_id
        with self._lock:
            self._accounts[email_address].put(record, message_id)
        return record

    # -- records ------------------------------------------------------------------------------
    def sent_to(self, address: str) -> list[Sent]:
        address = address.lower()
        with self._lock:
            return [s for s in self.sent
                    if any(a.lower() == address for _, a in getaddresses([s.message["To"] or ""]))]

    def count(self) -> int:
        with self._lock:
            return len(self.sent)

    def reset(self) -> None:
        """Forget sent messages, requests and scripts; accounts and tokens stay."""
        with self._lock:
            self.sent.clear()
            self.requests.clear()
            self.send_log.clear()
            self.uploads.clear()
            self._storm = None
            self._rules.clear()
            self.max_concurrent.clear()
            for account in self._accounts.values():
                account.clear()

    def _store(self, account: str, raw: bytes) -> Sent:
        gmail_id = secrets.token_hex(8)
        record = Sent(account, gmail_id, gmail_id, raw, time.time())
        message_id = record.message_id
        with self._lock:
            self.sent.append(record)
            self._accounts[account].put(record, message_id)
        return record

    def in_flight(self, account: str) -> int:
        """Sends of `account` being answered right now (between request and reply)."""
        with self._lock:
            return self._active.get(account, 0)

    def _enter(self, account: str, delta: int) -> None:
        with self._lock:
            self._active[account] = self._active.get(account, 0) + delta
            self.max_concurrent[account] = max(self.max_concurrent.get(account, 0),
                                               self._active[account])


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class _SearchQuery:
    """The part of Gmail's search syntax bounce checks use: terms `from:x` (substring of From),
    `after:EPOCH`, `before:EPOCH`, `newer_than:7d` (d, h, m), `rfc822msgid:id`; terms side by
    side AND, `OR` between terms, `(...)` groups, `{a b}` any of, `-term` not. Anything else is
    Gmail's 400, so a query the fake does not understand fails loudly."""

    UNITS = {"d": 86400, "h": 3600, "m": 60}

    def __init__(self, query: str) -> None:
        for ch in "(){}":
            query = query.replace(ch, f" {ch} ")
        self.query = query
        self.tokens = query.split()
        self.pos = 0

    def _refuse(self, why: str) -> _Refused:
        return _Refused(400, "invalidArgument", f"the fake cannot search {self.query!r}: {why}")

    def matcher(self):
        match = self._all(None)
        if self.pos != len(self.tokens):
            raise self._refuse(f"unexpected {self.tokens[self.pos]!r}")
        return match

    def _all(self, end: str | None):
        parts = []
        while self.pos < len(self.tokens) and self.tokens[self.pos] != end:
            parts.append(self._any())
        return lambda s: all(p(s) for p in parts)

    def _any(self):
        parts = [self._atom()]
        while self.pos < len(self.tokens) and self.tokens[self.pos] == "OR":
            self.pos += 1
            parts.append(self._atom())
        return lambda s: any(p(s) for p in parts)

    def _atom(self):
        if self.pos >= len(self.tokens):
            raise self._refuse("ends early")
        token = self.tokens[self.pos]
        self.pos += 1
        if token in ("(", "{"):
            end = ")" if token == "(" else "}"
            inner = self._all(end) if token == "(" else self._either(end)
            if self.pos >= len(self.tokens) or self.tokens[self.pos] != end:
                raise self._refuse(f"missing {end!r}")
            self.pos += 1
            return inner
        if token.startswith("-") and len(token) > 1:
            inner = self._term(token[1:])
            return lambda s: not inner(s)
        return self._term(token)

    def _either(self, end: str):
        parts = []
        while self.pos < len(self.tokens) and self.tokens[self.pos] != end:
            parts.append(self._atom())
        return lambda s: any(p(s) for p in parts)

    def _term(self, token: str):
        name, colon, value = token.partition(":")
        value = value.strip('"')
        if not colon or not value:
            raise self._refuse(f"free text {token!r} is not supported")
        name = name.lower()
        if name == "from":
            return lambda s: value.lower() in s.header("From").lower()
        if name in ("after", "before") and value.isdigit():
            moment = int(value)
            return (lambda s: s.time >= moment) if name == "after" else \
                (lambda s: s.time < moment)
        if name == "newer_than" and value[:-1].isdigit() and value[-1:] in self.UNITS:
            seconds = int(value[:-1]) * self.UNITS[value[-1]]
            return lambda s: s.time >= time.time() - seconds
        if name == "rfc822msgid":
            wanted = value.strip("<>")
            return lambda s: s.header("Message-ID").strip().strip("<>") == wanted
        raise self._refuse(f"term {token!r} is not supported")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without this every answer waits ~40 ms for the
    # client's delayed ACK (Nagle), which hides the runner's real costs in benchmarks.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        with self.fake._lock:          # logged before answering, so a test sees it at once
            self.fake.requests.append((self.command, self.path, status))
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, reason: str, message: str, headers=None) -> None:
        self._reply(status, error_body(status, reason, message), headers)

    @property
    def fake(self) -> FakeGmail:
        return self.server.fake

    def do_GET(self) -> None:
        self._body = b""
        self._dispatch()

    def do_POST(self) -> None:
        self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._dispatch()

    def do_PUT(self) -> None:
        self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            self._route()
        except _Refused as refused:
            self._error(refused.status, refused.reason, refused.message)
        except ConnectionError:   # the client went away (e.g. a killed worker): nobody to answer
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer, so the client does not hang
            traceback.print_exc()
            self._error(500, "fakeCrashed", f"the fake crashed: {type(exc).__name__}: {exc}")

    def _route(self) -> None:
        url = urlsplit(self.path)
        self._query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/token" and self.command == "POST":
            return self._token()
        send_as = SEND_AS_ROUTE.match(url.path)
        if send_as is not None and self.command == "GET":
            return self._send_as(send_as.group(1))
        route = ROUTE.match(url.path)
        if route is None:
            return self._error(404, "notFound", f"Not Found: {url.path}")
        upload, user, tail = route.groups()
        account = self.fake._tokens.get(self.headers.get("Authorization", "")[len("Bearer "):])
        if account is None:
            return self._error(401, "authError", "Invalid Credentials", {
                "WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", '
                                    'error="invalid_token"'})
        if user not in ("me", account):
            return self._error(403, "forbidden", f"Delegation denied for {account}")
        if upload and tail == "send" and self._query.get("uploadType") == "resumable":
            return self._resumable(account)
        if self.command == "POST" and tail == "send":
            return self._send(account, bool(upload))
        if self.command == "GET" and tail is None and not upload:
            return self._list(account)
        if self.command == "GET" and tail and not upload:
            return self._get(account, tail)
        self._error(404, "notFound", "Requested entity was not found.")

    def _send_as(self, user: str) -> None:
        """users.settings.sendAs.list: the primary address and the aliases; needs one of
        SETTINGS_READ_SCOPES (gmail.send alone is refused, as Gmail does)."""
        token = self.headers.get("Authorization", "")[len("Bearer "):]
        account = self.fake._tokens.get(token)
        if account is None:
            return self._error(401, "authError", "Invalid Credentials")
        if user not in ("me", account):
            return self._error(403, "forbidden", f"Delegation denied for {account}")
        if not self.fake._token_scopes.get(token, set()) & SETTINGS_READ_SCOPES:
            return self._error(403, "insufficientPermissions",
                               "Request had insufficient authentication scopes.")
        with self.fake._lock:
            self.fake.send_as_reads.append(account)
            aliases = dict(self.fake._accounts[account].aliases)
        entries = [{"sendAsEmail": account, "displayName": "", "replyToAddress": "",
                    "signature": "", "isPrimary": True, "isDefault": True}]
        entries += [{"sendAsEmail": alias, "displayName": "", "replyToAddress": "",
                     "signature": "", "isDefault": False, "treatAsAlias": True,
                     "verificationStatus": status} for alias, status in aliases.items()]
        self._reply(200, {"sendAs": entries})

    def _token(self) -> None:
        form = {k: v[0] for k, v in parse_qs(self._body.decode()).items()}
        if form.get("grant_type") == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._jwt_grant(form.get("assertion", ""))
        if form.get("grant_type") != "refresh_token":
            return self._reply(400, {"error": "unsupported_grant_type"})
        account = next((a for a in self.fake._accounts.values()
                        if a.refresh_token == form.get("refresh_token") and not a.revoked), None)
        if account is None:
            return self._reply(400, {"error": "invalid_grant",
                                     "error_description": "Token has been expired or revoked."})
        self._reply(200, {"access_token": self.fake.issue_token(account.email),
                          "expires_in": self.fake.token_lifetime, "token_type": "Bearer"})

    def _jwt_grant(self, assertion: str) -> None:
        """RFC 7523's JWT bearer grant, checked as Google's token endpoint does."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def refuse(status: int, error: str, description: str) -> None:
            self._reply(status, {"error": error, "error_description": description})

        try:
            head, body, signature = assertion.split(".")
            header, claims = json.loads(_b64url(head)), json.loads(_b64url(body))
            signature_bytes = _b64url(signature)
        except (ValueError, binascii.Error):
            return refuse(400, "invalid_request", "Invalid JWT: not a JWS compact form")
        client = self.fake._delegated.get(claims.get("iss"))
        if header.get("alg") != "RS256" or client is None:
            return refuse(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            client.public_key.verify(signature_bytes, f"{head}.{body}".encode(),
                                     padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return refuse(400, "invalid_grant", "Invalid JWT Signature.")
        now = time.time()
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE or not (
                claims.get("iat", 0) - 300 <= now <= claims.get("exp", 0)):
            return refuse(400, "invalid_grant", "Invalid JWT: Token must be a short-lived "
                                                "token (60 minutes) and in a reasonable timeframe.")
        sub, scopes = str(claims.get("sub") or ""), set(str(claims.get("scope", "")).split())
        if client.revoked or sub.split("@")[-1].lower() not in client.domains \
                or not scopes or not scopes <= client.scopes:
            return refuse(401, "unauthorized_client", UNAUTHORIZED_CLIENT)
        if sub not in self.fake._accounts:
            return refuse(400, "invalid_grant", "Invalid email or User ID")
        with self.fake._lock:
            self.fake.jwt_grants.append(claims)
        self._reply(200, {"access_token": self.fake.issue_token(sub, scopes),
                          "expires_in": self.fake.token_lifetime, "token_type": "Bearer"})

    def _resumable(self, account: str) -> None:
        """Google's resumable upload: POST opens a session (X-Upload-Content-Type must be
        message/rfc822), PUTs carry the bytes with Content-Range; 308 until all arrived."""
        upload_id = self._query.get("upload_id")
        if self.command == "POST" and upload_id is None:
            kind = self.headers.get("X-Upload-Content-Type", "")
            if kind != "message/rfc822":
                raise _Refused(400, "badRequest", f"X-Upload-Content-Type {kind!r} is not "
                                                  "message/rfc822")
            length = self.headers.get("X-Upload-Content-Length")
            upload_id = secrets.token_hex(8)
            with self.fake._lock:
                self.fake._sessions[upload_id] = {
                    "account": account, "length": int(length) if length else None,
                    "data": bytearray(), "content_type": kind}
            host, port = self.server.server_address[:2]
            return self._reply(200, {}, {"Location": f"http://{host}:{port}/upload/gmail/v1/"
                                         f"users/me/messages/send?uploadType=resumable"
                                         f"&upload_id={upload_id}"})
        session = self.fake._sessions.get(upload_id or "")
        if self.command != "PUT" or session is None or session["account"] != account:
            raise _Refused(404, "notFound", "no such upload session")
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)",
                             self.headers.get("Content-Range", ""))
        if match is None:
            raise _Refused(400, "badRequest", "a resumable PUT needs Content-Range")
        first, last, total = int(match[1]), int(match[2]), match[3]
        if first != len(session["data"]) or last - first + 1 != len(self._body):
            raise _Refused(400, "badRequest", f"Content-Range {match[0]} does not follow the "
                                              f"{len(session['data'])} bytes received")
        session["data"] += self._body
        if total == "*" or len(session["data"]) < int(total):
            self.send_response(308)
            self.send_header("Range", f"bytes=0-{len(session['data']) - 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if session["length"] is not None and session["length"] != int(total):
            raise _Refused(400, "badRequest", "X-Upload-Content-Length and Content-Range differ")
        with self.fake._lock:
            del self.fake._sessions[upload_id or ""]
        return self._send(account, True, bytes(session["data"]), "resumable")

    def _raw_message(self, upload: bool) -> bytes:
        """The RFC 822 bytes of a send request (raises _Refused for a bad one)."""
        kind = self._query.get("uploadType")
        if upload and kind == "media":
            return self._body
        if upload and kind == "multipart":
            # the client writes "--B\n<headers>\n\n{json}\n--B\n<headers>\n\n<message>\n--B--"
            boundary = re.search(r'boundary="?([^";]+)', self.headers["Content-Type"]).group(1)
            part = self._body.split(b"--" + boundary.encode())[2]
            part = part[2:] if part.startswith(b"\r\n") else part[1:]
            lf, crlf = part.find(b"\n\n"), part.find(b"\r\n\r\n")
            payload = part[crlf + 4:] if 0 <= crlf < lf or lf < 0 else part[lf + 2:]
            return payload[:-2] if payload.endswith(b"\r\n") else payload[:-1]
        if upload:
            raise _Refused(400, "badRequest", f"uploadType {kind} is not supported by the fake")
        if len(self._body) > self.fake.max_json_body:
            raise _Refused(400, "badRequest", "Request payload size exceeds the limit: "
                                              f"{self.fake.max_json_body} bytes.")
        try:
            raw = json.loads(self._body).get("raw")
            return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)) if raw else b""
        except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
            raise _Refused(400, "badRequest", f"Invalid JSON payload or raw: {exc}") from None

    def _send(self, account: str, upload: bool, raw: bytes | None = None,
              protocol: str | None = None) -> None:
        if raw is None:
            raw = self._raw_message(upload)
            protocol = self._query.get("uploadType") if upload else "raw"
        if upload:
            with self.fake._lock:
                self.fake.uploads.append({"protocol": protocol, "size": len(raw),
                                          "content_type": "message/rfc822"})
        if not raw:
            raise _Refused(400, "invalidArgument", "'raw' RFC822 payload message string or "
                                                   "uploading message via /upload/* URL required")
        self.fake._enter(account, +1)
        left = False

        def leave() -> None:   # before the answer is written: the client then sees it gone
            nonlocal left
            if not left:
                left = True
                self.fake._enter(account, -1)
        try:
            limit = self.fake.concurrency_limit.get(account)
            if limit is not None and self.fake.in_flight(account) > limit:
                self.fake._log_send(account, raw, 429)
                with self.fake._lock:
                    self.fake.refused_concurrent += 1
                leave()
                return self._error(429, "rateLimitExceeded",
                                   "Too many concurrent requests for user")
            rule = self.fake._take_rule(account)
            if self.fake.send_latency and self.fake._stopping.wait(self.fake.send_latency):
                return
            if rule is not None and rule.delay and self.fake._stopping.wait(rule.delay):
                return
            if rule is not None and rule.drop:
                if rule.store_anyway:
                    self.fake._store(account, raw)
                self.fake._log_send(account, raw, 0)
                return self._drop(rule.drop == "reset")
            if rule is not None and rule.status is not None:
                if rule.store_anyway:
                    self.fake._store(account, raw)
                self.fake._log_send(account, raw, rule.status)
                return self._error(rule.status, rule.reason, rule.message, rule.headers)
            if rule is None:
                status = self.fake._storm_status(account)
                if status is not None:
                    storm = self.fake._storm
                    if storm is not None and storm.store_anyway:
                        self.fake._store(account, raw)
                    self.fake._log_send(account, raw, status)
                    error = (storm.errors.get(status) if storm is not None else None) or \
                        DEFAULT_ERROR.get(status, ("backendError", "Error"))
                    return self._error(status, *error)
            record = self.fake._store(account, raw)
            self.fake._log_send(account, raw, 200)
            leave()
            self._reply(200, {"id": record.id, "threadId": record.thread_id, "labelIds": ["SENT"]})
        finally:
            leave()

    def _drop(self, reset: bool) -> None:
        """Close the connection without a byte of answer (RST with `reset`, else FIN)."""
        with self.fake._lock:
            self.fake.requests.append((self.command, self.path, 0))
        self.close_connection = True
        try:
            if reset:   # linger 0: closing sends RST (after the handler's files close)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _list(self, account: str) -> None:
        query = self._query.get("q", "")
        if query and not query.startswith("rfc822msgid:"):
            return self._search(account, query)
        wanted = query[len("rfc822msgid:"):].strip("<>")
        with self.fake._lock:
            mailbox = self.fake._accounts[account]
            found = list(mailbox.by_message_id.get(wanted, ()) if wanted else mailbox.mailbox)
        if not found:
            return self._reply(200, {"resultSizeEstimate": 0})
        self._reply(200, {"messages": [{"id": s.id, "threadId": s.thread_id} for s in found],
                          "resultSizeEstimate": len(found)})

    def _search(self, account: str, query: str) -> None:
        """messages.list with a Gmail search (bounce checks): newest first."""
        match = _SearchQuery(query).matcher()
        with self.fake._lock:
            found = [s for s in self.fake._accounts[account].mailbox if match(s)]
        found.sort(key=lambda s: s.time, reverse=True)
        if not found:
            return self._reply(200, {"resultSizeEstimate": 0})
        self._reply(200, {"messages": [{"id": s.id, "threadId": s.thread_id} for s in found],
                          "resultSizeEstimate": len(found)})

    def _get(self, account: str, gmail_id: str) -> None:
        with self.fake._lock:
            record = self.fake._accounts[account].by_id.get(gmail_id)
        if record is None:
            return self._error(404, "notFound", "Requested entity was not found.")
        body = {"id": record.id, "threadId": record.thread_id, "labelIds": list(record.labels),
                "sizeEstimate": len(record.raw), "internalDate": str(int(record.time * 1000))}
        form = self._query.get("format", "full")
        if form == "raw":
            body["raw"] = base64.urlsafe_b64encode(record.raw).decode()
        elif form in ("full", "metadata"):
            body["payload"] = {"mimeType": record.message.get_content_type(),
                               "headers": [{"name": k, "value": str(v)}
                                           for k, v in record.message.items()]}
        self._reply(200, body)
