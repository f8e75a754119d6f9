"""A key's suppression list: the addresses its jobs never send to (added here, by bounces and
complaints, and by one-click unsubscribe)."""
from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from mailjobs import defaults
from mailjobs.enqueue import RequestRejected
from mailjobs.records import SUPPRESSION_REASONS
from mailjobs.web.inputs import choice_arg, int_arg, json_body
from mailjobs.web.schemas import SuppressionIn
from mailjobs.web.state import api_key, get_store
from mailjobs.web.views import keyset_page, suppression_view

log = logging.getLogger("mailjobs.api")
bp = Blueprint("suppressions", __name__)


@bp.get("/api/suppressions")
def list_suppressions() -> Response:
    limit = int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
    after = int_arg("after", 0)
    reason = choice_arg("reason", SUPPRESSION_REASONS)
    rows, next_after = keyset_page(
        get_store().suppressions_page(api_key().id, after, limit + 1, reason), limit)
    return jsonify({"suppressions": [suppression_view(x) for x in rows],
                    "next_after": next_after})


@bp.post("/api/suppressions")
def add_suppression() -> Response:
    key = api_key()
    spec = json_body(SuppressionIn)
    entry, added = get_store().add_suppression(key.id, spec.email, spec.reason,
                                               detail=f"added through the API by key {key.id}")
    if added:
        log.info("%s suppressed (%s) by API key %d", entry.email, spec.reason, key.id)
    response = jsonify(suppression_view(entry))
    response.status_code = 201 if added else 200   # 200: listed already, entry unchanged
    return response


@bp.delete("/api/suppressions/<path:email>")   # path: a local part may hold "/"
def remove_suppression(email: str) -> Response:
    key = api_key()
    if not get_store().remove_suppression(key.id, email):
        raise RequestRejected(404, "not_found", f"{email} is not on this key's "
                              "suppression list", [("email", "not found")])
    log.info("%s removed from the suppression list by API key %d", email, key.id)
    return Response(status=204)
