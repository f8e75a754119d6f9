"""Signed event webhooks: event types, secrets, the Standard Webhooks signature, the URL and
address rules, and one HTTP POST to a receiver (standardwebhooks.com).

- A secret is `whsec_` + base64 of 24 random bytes; it is stored Fernet-encrypted under
  TOKEN_ENCRYPTION_KEY (sender_credentials.fernet), like the senders' refresh tokens.
- A POST carries `webhook-id` (the same on every retry of it), `webhook-timestamp` (Unix
  seconds, of this attempt) and `webhook-signature`: `v1,<base64 HMAC-SHA256 of
  "{id}.{timestamp}.{body}">` under the secret's decoded bytes, one per valid secret (after a
  rotation the previous one signs too, space-separated, for WEBHOOK_ROTATION_OVERLAP seconds).
- The receiver's host is resolved at send time and every address checked (no private, loopback,
  link-local, ... unless WEBHOOK_ALLOW_PRIVATE=1); the connection goes to the address that was
  checked (a second resolution could answer differently: DNS rebinding). No redirects are
  followed, the answer's body is read up to RESPONSE_CAP bytes, every wait is bounded.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3

from mailjobs.settings import Settings

EVENT_TYPES = ("recipient.sent", "recipient.failed", "recipient.bounced",
               "recipient.complained", "recipient.unsubscribed", "recipient.suppressed",
               "job.completed", "job.paused")
# The recipient statuses each recipient event is written for, when an outcome is recorded.
RECIPIENT_EVENT_STATUSES = {"recipient.sent": ("sent",),
                            "recipient.failed": ("failed", "expired"),
                            "recipient.suppressed": ("suppressed",)}
TEST_EVENT = "webhook.test"
MAX_BATCH = 100
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
# Bytes of a receiver's answer read at most (kept as the delivery's error when it failed).
RESPONSE_CAP = 4096
USER_AGENT = "mailjobs-webhooks/1"


class UrlRefused(ValueError):
    """The URL may not be used (scheme, form, or an address it resolves to)."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secrets_: list[str], msg_id: str, body: bytes,
                   timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": " ".join(signature(s, msg_id, ts, body) for s in secrets_),
            "content-type": "application/json", "user-agent": USER_AGENT}


def check_url(url: str, settings: Settings) -> None:
    """Registration: the form of the URL (the address is checked again at every send)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UrlRefused("must be an absolute https:// URL")
    if parts.scheme == "http" and not settings.webhook_allow_http:
        raise UrlRefused("must be https:// (WEBHOOK_ALLOW_HTTP=1 allows http://)")
    if parts.username or parts.password:
        raise UrlRefused("must not carry a user name or password")
    try:
        _ = parts.port
    except ValueError:
        raise UrlRefused("has an invalid port") from None
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return
    _check_address(literal, settings)


def _check_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                   settings: Settings) -> None:
    if settings.webhook_allow_private:
        return
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if (address.is_private or address.is_loopback or address.is_link_local or
            address.is_multicast or address.is_reserved or address.is_unspecified):
        raise UrlRefused(f"resolves to {address}, a private, loopback or link-local address "
                         "(WEBHOOK_ALLOW_PRIVATE=1 allows it)")


def resolve(host: str, port: int, settings: Settings) -> str:
    """The address to connect to: the first one the name resolves to, every one checked."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlRefused(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        _check_address(address, settings)
    return str(addresses[0])


@dataclass
class Answer:
    """What one POST came to: status code (None: no answer), error text, Retry-After seconds."""
    status: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def post(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> Answer:
    """POST `body` to `url`, connecting to the address checked at this moment; never raises."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        if parts.scheme == "http" and not settings.webhook_allow_http:
            raise UrlRefused("http:// is not allowed (WEBHOOK_ALLOW_HTTP=1 allows it)")
        address = resolve(host, port, settings)
    except UrlRefused as exc:
        return Answer(None, f"refused: {exc}")
    timeout = urllib3.Timeout(connect=settings.webhook_timeout, read=settings.webhook_timeout)
    if parts.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            address, port=port, timeout=timeout, retries=False, maxsize=1,
            server_hostname=host, assert_hostname=host)
    else:
        pool = urllib3.HTTPConnectionPool(address, port=port, timeout=timeout, retries=False,
                                          maxsize=1)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    netloc = host if ":" not in host else f"[{host}]"
    if parts.port:
        netloc += f":{parts.port}"
    started = time.monotonic()
    try:
        response = pool.urlopen("POST", path, body=body, headers={**headers, "host": netloc},
                                redirect=False, preload_content=False, assert_same_host=False)
        try:
            text = _read_capped(response, started + 2 * settings.webhook_timeout)
        finally:
            response.release_conn()
        error = None if 200 <= response.status < 300 else f"HTTP {response.status}: {text}"
        return Answer(response.status, error[:1000] if error else None,
                      _retry_after(response.headers.get("Retry-After")))
    except urllib3.exceptions.HTTPError as exc:
        kind = ("timeout" if isinstance(exc, (urllib3.exceptions.TimeoutError,
                                              urllib3.exceptions.ReadTimeoutError))
                else "connection failed")
        return Answer(None, f"{kind}: {exc}"[:1000])
    except OSError as exc:
        return Answer(None, f"connection failed: {exc}"[:1000])
    finally:
        pool.close()


def _read_capped(response: urllib3.BaseHTTPResponse, deadline: float) -> str:
    out = b""
    while len(out) < RESPONSE_CAP and time.monotonic() < deadline:
        chunk = response.read(min(1024, RESPONSE_CAP - len(out)))
        if not chunk:
            break
        out += chunk
    return out.decode("utf-8", "replace").strip()


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (only the delta-seconds form; an HTTP date is ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None


def retry_schedule(settings: Settings) -> list[float]:
    return [float(x) for x in settings.webhook_retry_schedule.replace(" ", "").split(",") if x]


def next_delay(settings: Settings, attempts: int, retry_after: float | None) -> float:
    """Seconds until the next attempt after `attempts` failed ones: the schedule's step (the
    last one repeats), stretched by up to 20 % of jitter, at least Retry-After (capped at the
    schedule's longest step)."""
    schedule = retry_schedule(settings) or [60.0]
    step = schedule[min(max(attempts, 1), len(schedule)) - 1]
    delay = step * random.uniform(1.0, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(schedule)))
    return delay
