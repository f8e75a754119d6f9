"""A key's stored templates: create one (version 1), add a version (PUT), list them, read one's
versions. Jobs name them with `template_name` (enqueue.py)."""
from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from mailjobs.enqueue import (
    RequestRejected,
    check_template_storage,
    check_templates,
    variants_json,
)
from mailjobs.records import StoredTemplate
from mailjobs.web.inputs import json_body
from mailjobs.web.schemas import StoredTemplateIn, TemplateIn
from mailjobs.web.state import api_key, get_settings, get_store
from mailjobs.web.views import template_view

log = logging.getLogger("mailjobs.api")
bp = Blueprint("templates", __name__)


def _template_answer(t: StoredTemplate, status: int = 200) -> Response:
    response = jsonify(template_view(t))
    response.status_code = status
    response.headers["Location"] = f"/api/templates/{t.name}"
    return response


@bp.post("/api/templates")
def create_template() -> Response:
    dao, key = get_store(), api_key()
    spec = json_body(StoredTemplateIn)
    check_templates(spec, get_settings(), prefix="")
    check_template_storage(dao, spec)
    stored = dao.add_template_version(key.id, spec.name, spec.subject, spec.html, spec.text,
                                      must_exist=False, variants=variants_json(spec))
    if stored is None:
        raise RequestRejected(409, "conflict", f"template {spec.name!r} exists; PUT "
                              f"/api/templates/{spec.name} makes a new version",
                              [("name", "exists already")])
    log.info("template %r version 1 created by API key %d", spec.name, key.id)
    return _template_answer(stored, 201)


@bp.put("/api/templates/<name>")
def update_template(name: str) -> Response:
    dao, key = get_store(), api_key()
    spec = json_body(TemplateIn)
    check_templates(spec, get_settings(), prefix="")
    check_template_storage(dao, spec)
    stored = dao.add_template_version(key.id, name, spec.subject, spec.html, spec.text,
                                      must_exist=True, variants=variants_json(spec))
    if stored is None:
        raise RequestRejected(404, "not_found", f"no template {name!r} for this API key",
                              [("name", "not found")])
    log.info("template %r version %d created by API key %d", name, stored.version, key.id)
    return _template_answer(stored)


@bp.get("/api/templates")
def list_templates() -> Response:
    return jsonify({"templates": [template_view(t) for t in get_store().templates(api_key().id)]})


@bp.get("/api/templates/<name>")
def template_versions(name: str) -> Response:
    versions = get_store().template_versions(api_key().id, name)
    if not versions:
        raise RequestRejected(404, "not_found", f"no template {name!r} for this API key",
                              [("name", "not found")])
    return jsonify({"name": name, "versions": [template_view(t) for t in versions]})
