"""The attachment endpoints of the HTTP API: POST /api/attachments (the raw bytes as the body),
GET and DELETE /api/attachments/<id>. A key sees only its own attachments (another key's id is
404, an operator's too: files are the tenant's)."""
from __future__ import annotations

import logging
import re

from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState

from mailjobs.attachments.store import MySQLStore, UploadRejected
from mailjobs.dao_mysql import AttachmentGone
from mailjobs.db import guard as db_guard
from mailjobs.enqueue import RequestRejected
from mailjobs.mail_message import header_text_problem
from mailjobs.records import Attachment
from mailjobs.web.schemas import AttachmentOut
from mailjobs.web.state import api_key, app_state, get_settings, get_store

log = logging.getLogger("mailjobs.api")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+\Z")
_PUBLIC_ID = re.compile(r"att_[0-9a-f]{1,36}\Z")
bp = Blueprint("attachments", __name__)
EXTENSION = "mailjobs.attachments"


def attachment_view(a: Attachment, deduplicated: bool | None = None) -> dict[str, object]:
    body = AttachmentOut(id=a.public_id, size=a.size, sha256=a.sha256.hex(),
                         content_type=a.content_type, filename=a.filename,
                         created_at=a.created_at, last_used_at=a.last_used_at,
                         deduplicated=deduplicated).model_dump(mode="json")
    if deduplicated is None:
        body.pop("deduplicated")
    return body


@bp.record_once
def _per_app(setup: BlueprintSetupState) -> None:
    state = app_state(setup.app)
    setup.app.extensions[EXTENSION] = MySQLStore(state["dao"],
                                                 state["settings"].attachment_chunk_bytes)


def _store() -> MySQLStore:
    store: MySQLStore = current_app.extensions[EXTENSION]
    return store


def _own(public_id: str) -> Attachment:
    found = (get_store().attachment(api_key().id, public_id)
             if _PUBLIC_ID.match(public_id) else None)
    if found is None:
        raise RequestRejected(404, "not_found", f"no attachment {public_id} for this API key",
                              [("attachment_id", "not found")])
    return found


@bp.post("/api/attachments")
def upload_attachment() -> Response:
    settings = get_settings()
    limit = settings.attachment_max_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise RequestRejected(413, "payload_too_large", f"the file is {length} bytes, more "
                              f"than ATTACHMENT_MAX_BYTES ({limit})",
                              [("body", f"at most {limit} bytes")])
    if limit > settings.max_request_bytes:
        request.max_content_length = limit + 1   # this route's own budget (Flask >= 3.1)
    content_type = (request.mimetype or "application/octet-stream").lower()
    if not _MEDIA_TYPE.match(content_type) or content_type.startswith("multipart/"):
        raise RequestRejected(400, "validation_error", "send the file's bytes as the body "
                              "with its own Content-Type (e.g. application/pdf)",
                              [("Content-Type", "a media type such as application/pdf")])
    filename = request.args.get("filename") or None
    if filename is not None and (len(filename) > 255 or header_text_problem(filename)):
        raise RequestRejected(400, "validation_error", "filename must be 1-255 characters "
                              "without line breaks", [("filename", "1-255 characters, one "
                                                                   "line")])
    try:
        stored, new = _store().upload(
            api_key().id, request.stream, content_type, filename, limit,
            # each chunk's statement gets the whole deadline (a 25 MB upload is many)
            on_chunk=lambda: db_guard.start_deadline(settings.db_request_deadline))
    except UploadRejected as exc:
        raise RequestRejected(exc.status, exc.code, exc.message,
                              [(exc.field, exc.message)]) from None
    except AttachmentGone as exc:
        raise RequestRejected(409, "attachment_deleted", f"{exc}; upload it again",
                              [("body", "deleted meanwhile")]) from None
    if new:
        log.info("attachment %s stored: %d bytes (%s) by API key %d", stored.public_id,
                 stored.size, stored.content_type, api_key().id)
    response = jsonify(attachment_view(stored, deduplicated=not new))
    response.status_code = 201
    response.headers["Location"] = f"/api/attachments/{stored.public_id}"
    return response


@bp.get("/api/attachments/<attachment_id>")
def get_attachment(attachment_id: str) -> Response:
    return jsonify(attachment_view(_own(attachment_id)))


@bp.delete("/api/attachments/<attachment_id>")
def delete_attachment(attachment_id: str) -> Response:
    found, used_by = (get_store().delete_attachment(api_key().id, attachment_id)
                      if _PUBLIC_ID.match(attachment_id) else (False, None))
    if not found:
        raise RequestRejected(404, "not_found", f"no attachment {attachment_id} for this "
                              "API key", [("attachment_id", "not found")])
    if used_by is not None:
        raise RequestRejected(409, "attachment_in_use", f"job {used_by} uses attachment "
                              f"{attachment_id} and has not finished; delete it once the "
                              "job has finished (or cancel the job)",
                              [("attachment_id", f"used by job {used_by}")])
    log.info("attachment %s deleted by API key %d", attachment_id, api_key().id)
    return Response(status=204)
