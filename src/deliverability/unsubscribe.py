"""One-click unsubscribe (RFC 8058): signed links in List-Unsubscribe, and the public /u/ pages.

A message of a job with unsubscribe on carries

    List-Unsubscribe: <https://mail.example.com/u/TOKEN>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

TOKEN is `[recipient id, API key id]` signed with itsdangerous' URLSafeTimedSerializer (HMAC
SHA-256 keyed by SECRET_KEY, the key the dashboard's cookies use, with its own salt) and stamped
with the time it was made: it cannot be forged or guessed from another, and it is refused after
UNSUBSCRIBE_TOKEN_DAYS. A mailbox provider POSTs to the URL (`POST /u/TOKEN`, body
`List-Unsubscribe=One-Click`): the address goes on the key's suppression list at once (reason
`unsubscribed`) and the answer is a short 200 page. `GET /u/TOKEN` (a person who clicked the
link, or a link scanner) changes nothing: it shows a page with a button that POSTs.

The routes (the blueprint `bp`) need no API key and are not in /openapi.json: they are for
mail recipients.
"""
from __future__ import annotations

import hashlib
import logging
from functools import lru_cache

from flask import Blueprint, Response, current_app, render_template_string, request
from flask.blueprints import BlueprintSetupState
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.timed import TimestampSigner

from mailjobs.dao_mysql import DatabaseUnavailable
from mailjobs.settings import Settings
from mailjobs.web.state import app_state, get_settings, get_store

log = logging.getLogger("mailjobs.unsubscribe")
bp = Blueprint("unsubscribe", __name__)
EXTENSION = "mailjobs.unsubscribe"

SALT = "mailjobs.unsubscribe.v1"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action "
                               "'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}


def _secret(settings: Settings) -> str:
    from mailjobs.dashboard.pages import (
        secret_key,  # SECRET_KEY, or the development key in var/secret_key
    )

    return secret_key(settings)


def _serializer(secret: str, issued_at: float | None = None) -> URLSafeTimedSerializer:
    signer: type[TimestampSigner] = TimestampSigner
    if issued_at is not None:      # tests: a token made in the past
        at = int(issued_at)

        class _At(TimestampSigner):
            def get_timestamp(self) -> int:
                return at
        signer = _At
    return URLSafeTimedSerializer(secret, salt=SALT, signer=signer,
                                  signer_kwargs={"digest_method": hashlib.sha256})


class Tokens:
    """Makes and checks unsubscribe tokens with one secret."""

    def __init__(self, secret: str, max_age_days: int) -> None:
        self.secret = secret
        self.max_age = max(1, int(max_age_days * 86400))
        self._serializer = _serializer(secret)

    @classmethod
    def for_settings(cls, settings: Settings) -> Tokens:
        return cls(_secret(settings), settings.unsubscribe_token_days)

    def make(self, recipient_id: int, api_key_id: int, issued_at: float | None = None) -> str:
        serializer = self._serializer if issued_at is None else _serializer(self.secret,
                                                                             issued_at)
        return serializer.dumps([int(recipient_id), int(api_key_id)])

    def check(self, token: str) -> tuple[int, int]:
        """(recipient id, API key id); raises SignatureExpired or BadSignature."""
        value = self._serializer.loads(token, max_age=self.max_age)
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise BadSignature("unexpected payload")
        return value[0], value[1]

    def url(self, base_url: str, recipient_id: int, api_key_id: int) -> str:
        return f"{base_url.rstrip('/')}/u/{self.make(recipient_id, api_key_id)}"


@lru_cache(maxsize=8)
def tokens_for(settings: Settings) -> Tokens:
    """The Tokens of these settings (the runner's sending threads share one)."""
    return Tokens.for_settings(settings)


def headers(url: str) -> dict[str, str]:
    """The RFC 8058 headers of one message."""
    return {"List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }}</title>
<style>
  body { margin: 0; background: #f4f5f7; color: #1d2330; font: 16px/1.5 -apple-system, "Segoe UI",
         Roboto, Arial, sans-serif; }
  main { max-width: 460px; margin: 12vh auto; background: #fff; border: 1px solid #e4e7ec;
         border-radius: 10px; padding: 1.6rem 1.8rem; }
  h1 { font-size: 1.3rem; margin: 0 0 .6rem; }
  p { margin: .4rem 0 1rem; color: #475467; }
  button { font: inherit; padding: .55rem 1.2rem; border-radius: 7px; border: 1px solid #1d2330;
           background: #1d2330; color: #fff; cursor: pointer; }
  .addr { font-weight: 600; color: #1d2330; }
</style></head>
<body><main>
<h1>{{ title }}</h1>
<p>{{ message }}{% if email %} <span class="addr">{{ email }}</span>{% endif %}</p>
{% if form %}
<form method="post" action="">
  <input type="hidden" name="List-Unsubscribe" value="One-Click">
  <button type="submit">Unsubscribe</button>
</form>
{% endif %}
</main></body></html>
"""


def _page(status: int, title: str, message: str, email: str | None = None,
          form: bool = False) -> Response:
    body = render_template_string(_PAGE, title=title, message=message, email=email, form=form)
    response = Response(body, status=status, mimetype="text/html")
    response.headers.update(PAGE_HEADERS)
    return response


@bp.record_once
def _per_app(setup: BlueprintSetupState) -> None:
    setup.app.extensions[EXTENSION] = Tokens.for_settings(app_state(setup.app)["settings"])


def _checked(token: str) -> tuple[int, int] | Response:
    tokens: Tokens = current_app.extensions[EXTENSION]
    try:
        return tokens.check(token)
    except SignatureExpired:
        return _page(400, "This link has expired",
                     f"Unsubscribe links work for {get_settings().unsubscribe_token_days} days. "
                     "Use the link in a more recent message, or reply to the sender.")
    except BadSignature:
        return _page(400, "This link is not valid",
                     "The unsubscribe link is incomplete or was changed. Copy the whole "
                     "link from the message.")


def _unknown() -> Response:
    return _page(400, "This link is not valid",
                 "We could not find the message this link belongs to.")


@bp.get("/u/<token>")
def unsubscribe_page(token: str) -> Response:
    checked = _checked(token)
    if isinstance(checked, Response):
        return checked
    try:
        target = get_store().unsubscribe_target(*checked)
    except DatabaseUnavailable:
        target = ("", 0)     # the button still works once the database is back
    if target is None:
        return _unknown()
    return _page(200, "Unsubscribe?", "Press the button to stop these emails to",
                 email=target[0] or "this address", form=True)


@bp.post("/u/<token>")
def unsubscribe_now(token: str) -> Response:
    checked = _checked(token)
    if isinstance(checked, Response):
        log.warning("unsubscribe refused from %s: %s", request.remote_addr, checked.status)
        return checked
    recipient_id, api_key_id = checked
    try:
        done = get_store().unsubscribe(recipient_id, api_key_id)
    except DatabaseUnavailable as exc:
        log.error("unsubscribe of recipient=%d failed: %s", recipient_id, exc)
        page = _page(503, "Please try again", "We could not record your request just now. "
                     "Please try again in a minute.")
        page.headers["Retry-After"] = "60"
        return page
    if done is None:
        return _unknown()
    email, added = done
    log.info("unsubscribed %s (recipient=%d, API key %d)%s", email, recipient_id,
             api_key_id, "" if added else ": was on the suppression list already")
    return _page(200, "You are unsubscribed", "No more of these emails will be sent to",
                 email=email)
