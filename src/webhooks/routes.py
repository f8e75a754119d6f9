"""The webhook endpoints of the HTTP API: /api/webhooks and its deliveries.

A key sees and changes only its own endpoints (another key's id is 404); an operator key lists
and reaches every key's. The signing secret is answered once, when it is made (creation and
rotation), and stored encrypted.
"""
from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from flask.blueprints import BlueprintSetupState

from mailjobs import defaults
from mailjobs.enqueue import RequestRejected
from mailjobs.web.inputs import int_arg, json_body
from mailjobs.web.schemas import (
    WebhookCreatedOut,
    WebhookDeliveryOut,
    WebhookIn,
    WebhookOut,
    WebhookSecretOut,
    WebhookTestOut,
)
from mailjobs.web.state import api_key, app_state, get_settings, get_store
from mailjobs.web.views import keyset_page
from mailjobs.webhooks import post as webhooks
from mailjobs.webhooks.dispatch import Signer, new_msg_id

log = logging.getLogger("mailjobs.api")
bp = Blueprint("webhooks", __name__)
EXTENSION = "mailjobs.webhooks"


def webhook_view(w: dict[str, Any]) -> dict[str, Any]:
    return WebhookOut(**{k: w[k] for k in WebhookOut.model_fields}).model_dump(mode="json")


def delivery_view(d: dict[str, Any]) -> dict[str, Any]:
    return WebhookDeliveryOut(webhook_id=d["msg_id"], **{
        k: d[k] for k in WebhookDeliveryOut.model_fields if k != "webhook_id"}).model_dump(
        mode="json")


@bp.record_once
def _per_app(setup: BlueprintSetupState) -> None:
    setup.app.extensions[EXTENSION] = Signer(app_state(setup.app)["settings"])


def _signer() -> Signer:
    signer: Signer = current_app.extensions[EXTENSION]
    return signer


def _visible(webhook_id: int) -> dict[str, Any]:
    w = get_store().webhook(webhook_id)
    key = api_key()
    if w is None or (not key.is_operator and w["api_key_id"] != key.id):
        raise RequestRejected(404, "not_found", f"no webhook {webhook_id} for this API key",
                              [("webhook_id", "not found")])
    return w


@bp.post("/api/webhooks")
def create_webhook() -> Response:
    dao, settings, key = get_store(), get_settings(), api_key()
    spec = json_body(WebhookIn)
    try:
        webhooks.check_url(spec.url, settings)
    except webhooks.UrlRefused as exc:
        raise RequestRejected(400, "validation_error", f"url {exc}",
                              [("url", str(exc))]) from None
    events = list(dict.fromkeys(spec.events or webhooks.EVENT_TYPES))
    secret = webhooks.new_secret()
    webhook_id = dao.create_webhook(key.id, spec.url, spec.description, events,
                                    spec.batch_size, _signer().encrypt(secret))
    log.info("webhook endpoint=%d %s created by API key %d (events: %s)", webhook_id,
             spec.url, key.id, ", ".join(events))
    w = _visible(webhook_id)
    response = jsonify(WebhookCreatedOut(secret=secret, **{
        k: w[k] for k in WebhookOut.model_fields}).model_dump(mode="json"))
    response.status_code = 201
    response.headers["Location"] = f"/api/webhooks/{webhook_id}"
    return response


@bp.get("/api/webhooks")
def list_webhooks() -> Response:
    key = api_key()
    limit = int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
    after = int_arg("after", 0)
    owner = None if key.is_operator else key.id
    rows, next_after = keyset_page(get_store().webhooks_page(owner, after, limit + 1), limit,
                                   cursor=lambda w: int(w["id"]))
    return jsonify({"webhooks": [webhook_view(w) for w in rows], "next_after": next_after})


@bp.get("/api/webhooks/<int:webhook_id>")
def get_webhook(webhook_id: int) -> Response:
    return jsonify(webhook_view(_visible(webhook_id)))


@bp.delete("/api/webhooks/<int:webhook_id>")
def delete_webhook(webhook_id: int) -> Response:
    _visible(webhook_id)
    get_store().delete_webhook(webhook_id)
    log.info("webhook endpoint=%d deleted by API key %d", webhook_id, api_key().id)
    return Response(status=204)


@bp.post("/api/webhooks/<int:webhook_id>/rotate-secret")
def rotate_secret(webhook_id: int) -> Response:
    dao = get_store()
    _visible(webhook_id)
    secret = webhooks.new_secret()
    dao.rotate_webhook_secret(webhook_id, _signer().encrypt(secret),
                              get_settings().webhook_rotation_overlap)
    w = _visible(webhook_id)
    log.info("webhook endpoint=%d secret rotated by API key %d; the previous one signs "
             "too until %s", webhook_id, api_key().id, w["previous_secret_until"])
    return jsonify(WebhookSecretOut(id=webhook_id, secret=secret,
                                    previous_secret_until=w["previous_secret_until"])
                   .model_dump(mode="json"))


@bp.post("/api/webhooks/<int:webhook_id>/test")
def test_webhook(webhook_id: int) -> Response:
    """A webhook.test event, sent now from this request (not through the outbox)."""
    w = _visible(webhook_id)
    msg_id = new_msg_id()
    event = {"type": webhooks.TEST_EVENT,
             "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
             "data": {"webhook_id": webhook_id, "url": w["url"]}}
    payload = json.dumps(event)
    answer = _signer().send(w, msg_id, (f"[{payload}]" if w["batch_size"] > 1
                                        else payload).encode())
    log.info("webhook endpoint=%d test event %s: %s", webhook_id, msg_id,
             answer.status if answer.ok else answer.error)
    return jsonify(WebhookTestOut(delivered=answer.ok, status_code=answer.status,
                                  error=answer.error, webhook_id=msg_id)
                   .model_dump(mode="json"))


@bp.get("/api/webhooks/<int:webhook_id>/deliveries")
def list_deliveries(webhook_id: int) -> Response:
    _visible(webhook_id)
    limit = int_arg("limit", defaults.PAGE_SIZE, 1, defaults.MAX_PAGE_SIZE)
    before = int_arg("before", None)
    rows, next_before = keyset_page(
        get_store().webhook_deliveries(webhook_id, before, limit + 1), limit,
        cursor=lambda d: int(d["id"]))
    return jsonify({"deliveries": [delivery_view(d) for d in rows],
                    "next_before": next_before})


@bp.post("/api/webhooks/<int:webhook_id>/deliveries/<int:delivery_id>/retry")
def retry_delivery(webhook_id: int, delivery_id: int) -> Response:
    dao = get_store()
    _visible(webhook_id)
    delivery = (dao.webhook_delivery(delivery_id)
                if dao.retry_webhook_delivery(webhook_id, delivery_id) else None)
    if delivery is None:
        raise RequestRejected(404, "not_found", f"no delivery {delivery_id} of webhook "
                              f"{webhook_id}", [("delivery_id", "not found")])
    log.info("webhook endpoint=%d delivery=%d retried by API key %d (endpoint enabled, due "
             "now)", webhook_id, delivery_id, api_key().id)
    response = jsonify(delivery_view(delivery))
    response.status_code = 202
    return response
