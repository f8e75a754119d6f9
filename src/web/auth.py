"""Who is calling: the X-API-Key of every /api/ request (checked before its route runs), and
the operator-only rule of some endpoints."""
from __future__ import annotations

from flask import Response, g, request

from mailjobs.enqueue import RequestRejected
from mailjobs.web.errors import error_response
from mailjobs.web.state import api_key, app_state


def authenticate() -> Response | None:
    """before_request: a /api/ request without a known, unrevoked key is answered 401 here."""
    if not request.path.startswith("/api/"):
        return None
    presented = request.headers.get("X-API-Key")
    if not presented:
        return error_response(401, "unauthorized", "send your API key in the X-API-Key header",
                              [("X-API-Key", "missing")])
    key = app_state()["verifier"].verify(presented)
    if key is None:
        return error_response(401, "unauthorized", "the API key is unknown or revoked",
                              [("X-API-Key", "unknown or revoked")])
    g.api_key = key
    return None


def operator_only() -> None:
    if not api_key().is_operator:
        raise RequestRejected(403, "operator_only", "this needs an operator API key",
                              [("X-API-Key", "not an operator key")])
