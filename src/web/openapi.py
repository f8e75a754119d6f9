"""`/openapi.json`, generated from the pydantic models in api_schemas."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mailjobs.records import JOB_STATUSES, RECIPIENT_STATUSES, SUPPRESSION_REASONS
from mailjobs.web import schemas as s

_MODELS: list[type[BaseModel]] = [s.SendTemplateEmailsIn, s.RetryIn, s.RetryOut, s.EnqueueOut, s.ErrorOut, s.JobOut,
           s.JobsPageOut, s.RecipientsPageOut, s.RunnersOut, s.SendersOut, s.HealthOut,
           s.StoredTemplateIn, s.TemplateIn, s.TemplateOut, s.TemplatesOut,
           s.TemplateVersionsOut, s.SuppressionIn, s.SuppressionOut, s.SuppressionsPageOut,
           s.AddressTraceOut, s.WebhookIn, s.WebhookOut, s.WebhookCreatedOut, s.WebhooksPageOut,
           s.WebhookSecretOut, s.WebhookTestOut, s.WebhookDeliveriesPageOut]


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {400: "invalid input (the field is named)", 401: "missing or unknown API key",
             403: "the key may not send as this sender (or: not an operator key)",
             404: "no such job (template, suppression) for this key",
             413: "body larger than MAX_REQUEST_BYTES", 415: "body is not application/json",
             409: "not allowed in the current state (job status, existing template)",
             422: "Idempotency-Key reused with another body", 503: "database unavailable"}
    return {str(c): _json(s.ErrorOut, words[c]) for c in codes}


def _param(name: str, where: str, description: str, schema: dict[str, Any] | None = None,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "description": description,
            "schema": schema or {"type": "integer"}}


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema([(m, "validation") for m in _MODELS],
                                    ref_template="#/components/schemas/{model}")
    job_id = _param("job_id", "path", "the job's id", required=True)
    name = _param("name", "path", "the template's name", {"type": "string"}, required=True)
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailjobs", "version": "1.0",
                 "description": "Templated bulk email through Gmail, queued in MySQL."},
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                                "bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an API key (for /metrics scrapers)"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/api/jobs/send_template_emails": {"post": {
                "summary": "Queue a templated email to many recipients; answers at once",
                "parameters": [_param("Idempotency-Key", "header",
                                      "replays the first answer for the same body",
                                      {"type": "string", "minLength": 1, "maxLength": 255})],
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(s.SendTemplateEmailsIn)}}},
                "responses": {"202": _json(s.EnqueueOut, "stored; sending happens in the background"),
                              **_errors(400, 401, 403, 413, 415, 422, 503)}}},
            "/api/jobs": {"get": {
                "summary": "This key's jobs, newest first (an operator key sees all)",
                "parameters": [_param("limit", "query", "page size (1-1000, default 100)",
                                      {"type": "integer", "minimum": 1, "maximum": 1000}),
                               _param("before", "query", "next_before of the previous page",
                                      {"type": "integer", "minimum": 1}),
                               _param("status", "query", "only jobs in this status",
                                      {"type": "string", "enum": list(JOB_STATUSES)})],
                "responses": {"200": _json(s.JobsPageOut, "one page of jobs"),
                              **_errors(400, 401, 503)}}},
            "/api/jobs/{job_id}": {"get": {
                "summary": "A job's status and its recipients counted by status",
                "parameters": [job_id],
                "responses": {"200": _json(s.JobOut, "the job"), **_errors(401, 404, 503)}}},
            **{f"/api/jobs/{{job_id}}/{action}": {"post": {
                "summary": summary, "parameters": [job_id],
                "responses": {"200": _json(s.JobOut, "the job's new state"),
                              **_errors(401, 404, 409, 503)}}}
               for action, summary in (
                   ("cancel", "No further sends; unsent recipients become cancelled"),
                   ("pause", "Runners stop claiming the job within a poll interval"),
                   ("resume", "A paused job goes back to work"))},
            "/api/jobs/{job_id}/retry": {"post": {
                "summary": "Queue matching recipients again (default: failed and in_doubt)",
                "parameters": [job_id],
                "requestBody": {"required": False, "content": {
                    "application/json": {"schema": _ref(s.RetryIn)}}},
                "responses": {"200": _json(s.RetryOut, "the job's new state, and how many "
                                                       "recipients were queued again"),
                              **_errors(400, 401, 404, 409, 415, 503)}}},
            "/api/jobs/{job_id}/recipients": {"get": {
                "summary": "One page of a job's recipients (keyset pagination by id)",
                "parameters": [job_id, _param("status", "query", "only this status",
                                              {"type": "string",
                                               "enum": list(RECIPIENT_STATUSES)}),
                               _param("limit", "query", "page size (1-1000, default 100)",
                                      {"type": "integer", "minimum": 1, "maximum": 1000}),
                               _param("after", "query", "next_after of the previous page",
                                      {"type": "integer", "minimum": 0})],
                "responses": {"200": _json(s.RecipientsPageOut, "one page of recipients"),
                              **_errors(400, 401, 404, 503)}}},
            "/api/jobs/{job_id}/recipients.csv": {"get": {
                "summary": "Every recipient of a job as CSV (streamed; header row; values a "
                           "spreadsheet would evaluate are prefixed with ')",
                "parameters": [job_id],
                "responses": {"200": {"description": "recipient_id, to_email, name, status, "
                                                     "attempts, error_code, error, sent_at, "
                                                     "gmail_message_id, locale, locale_used",
                                      "content": {"text/csv": {"schema": {"type": "string"}}}},
                              **_errors(401, 404, 503)}}},
            "/api/recipients": {"get": {
                "summary": "One address across jobs: every recipient row (newest first) and its "
                           "suppressions; this key's jobs, every key's for an operator key",
                "parameters": [_param("email", "query", "the address (any case)",
                                      {"type": "string", "minLength": 1}, required=True),
                               _param("limit", "query", "page size (1-1000, default 100)",
                                      {"type": "integer", "minimum": 1, "maximum": 1000}),
                               _param("before", "query", "next_before of the previous page",
                                      {"type": "integer", "minimum": 1})],
                "responses": {"200": _json(s.AddressTraceOut, "the address's rows"),
                              **_errors(400, 401, 503)}}},
            "/api/templates": {
                "post": {"summary": "Store a new template (version 1)",
                         "requestBody": {"required": True, "content": {
                             "application/json": {"schema": _ref(s.StoredTemplateIn)}}},
                         "responses": {"201": _json(s.TemplateOut, "stored"),
                                       **_errors(400, 401, 409, 415, 503)}},
                "get": {"summary": "The newest version of each of this key's templates",
                        "responses": {"200": _json(s.TemplatesOut, "templates"),
                                      **_errors(401, 503)}}},
            "/api/templates/{name}": {
                "put": {"summary": "Store the next version (earlier versions never change)",
                        "parameters": [name],
                        "requestBody": {"required": True, "content": {
                            "application/json": {"schema": _ref(s.TemplateIn)}}},
                        "responses": {"200": _json(s.TemplateOut, "the new version"),
                                      **_errors(400, 401, 404, 415, 503)}},
                "get": {"summary": "Every version of a template, newest first",
                        "parameters": [name],
                        "responses": {"200": _json(s.TemplateVersionsOut, "versions"),
                                      **_errors(401, 404, 503)}}},
            "/api/suppressions": {
                "get": {"summary": "This key's suppression list (keyset pagination by id)",
                        "parameters": [
                            _param("reason", "query", "only this reason",
                                   {"type": "string", "enum": list(SUPPRESSION_REASONS)}),
                            _param("limit", "query", "page size (1-1000, default 100)",
                                   {"type": "integer", "minimum": 1, "maximum": 1000}),
                            _param("after", "query", "next_after of the previous page",
                                   {"type": "integer", "minimum": 0})],
                        "responses": {"200": _json(s.SuppressionsPageOut, "one page"),
                                      **_errors(400, 401, 503)}},
                "post": {"summary": "Suppress an address: this key's jobs never send to it",
                         "requestBody": {"required": True, "content": {
                             "application/json": {"schema": _ref(s.SuppressionIn)}}},
                         "responses": {"201": _json(s.SuppressionOut, "added"),
                                       "200": _json(s.SuppressionOut,
                                                    "listed already (entry unchanged)"),
                                       **_errors(400, 401, 415, 503)}}},
            "/api/suppressions/{email}": {"delete": {
                "summary": "Take an address off this key's suppression list",
                "parameters": [_param("email", "path", "the address (any case)",
                                      {"type": "string"}, required=True)],
                "responses": {"204": {"description": "removed"},
                              **_errors(401, 404, 503)}}},
            **_webhook_paths(),
            "/api/runners": {"get": {
                "summary": "Runners with their heartbeat age and state (operator key)",
                "responses": {"200": _json(s.RunnersOut, "recent runners"),
                              **_errors(401, 403, 503)}}},
            "/api/senders": {"get": {
                "summary": "Senders: limits, today's use, authorisation state (operator key)",
                "responses": {"200": _json(s.SendersOut, "senders"), **_errors(401, 403, 503)}}},
            "/healthz": {"get": {
                "summary": "Liveness of the service and its database", "security": [],
                "responses": {"200": _json(s.HealthOut, "healthy"),
                              "503": _json(s.HealthOut, "database (or runners) unavailable")}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (sends, latencies, queue depth, runners, pool); "
                           "operator key, in X-API-Key or as Authorization: Bearer",
                "security": [{"apiKey": []}, {"bearer": []}],
                "responses": {"200": {"description": "Prometheus text format", "content": {
                    "text/plain": {"schema": {"type": "string"}}}},
                    **_errors(401, 403, 503)}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
    }


def _webhook_paths() -> dict[str, Any]:
    hook = _param("webhook_id", "path", "the endpoint's id", required=True)
    page = [_param("limit", "query", "page size (1-1000, default 100)",
                   {"type": "integer", "minimum": 1, "maximum": 1000})]
    return {
        "/api/webhooks": {
            "get": {"summary": "This key's webhook endpoints (an operator key: every key's), "
                               "keyset paged by id",
                    "parameters": [*page, _param("after", "query", "next_after of the previous "
                                                 "page", {"type": "integer", "minimum": 0})],
                    "responses": {"200": _json(s.WebhooksPageOut, "one page"),
                                  **_errors(400, 401, 503)}},
            "post": {"summary": "Register an endpoint; the answer carries its signing secret, "
                                "shown once",
                     "requestBody": {"required": True, "content": {
                         "application/json": {"schema": _ref(s.WebhookIn)}}},
                     "responses": {"201": _json(s.WebhookCreatedOut, "registered"),
                                   **_errors(400, 401, 415, 503)}}},
        "/api/webhooks/{webhook_id}": {
            "get": {"summary": "One endpoint", "parameters": [hook],
                    "responses": {"200": _json(s.WebhookOut, "the endpoint"),
                                  **_errors(401, 404, 503)}},
            "delete": {"summary": "Delete an endpoint, its deliveries and undelivered events",
                       "parameters": [hook],
                       "responses": {"204": {"description": "deleted"},
                                     **_errors(401, 404, 503)}}},
        "/api/webhooks/{webhook_id}/rotate-secret": {"post": {
            "summary": "A new secret (shown once); the previous one signs too for "
                       "WEBHOOK_ROTATION_OVERLAP seconds",
            "parameters": [hook],
            "responses": {"200": _json(s.WebhookSecretOut, "rotated"),
                          **_errors(401, 404, 503)}}},
        "/api/webhooks/{webhook_id}/test": {"post": {
            "summary": "Send a webhook.test event now and answer what the receiver said",
            "parameters": [hook],
            "responses": {"200": _json(s.WebhookTestOut, "the attempt"),
                          **_errors(401, 404, 503)}}},
        "/api/webhooks/{webhook_id}/deliveries": {"get": {
            "summary": "The endpoint's deliveries, newest first (keyset paged by id)",
            "parameters": [hook, *page, _param("before", "query", "next_before of the "
                                               "previous page", {"type": "integer",
                                                                 "minimum": 0})],
            "responses": {"200": _json(s.WebhookDeliveriesPageOut, "one page"),
                          **_errors(400, 401, 404, 503)}}},
        "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/retry": {"post": {
            "summary": "Send a delivery again now (the endpoint is enabled again)",
            "parameters": [hook, _param("delivery_id", "path", "the delivery's id",
                                        required=True)],
            "responses": {"202": _json(s.WebhookDeliveryOut, "due now"),
                          **_errors(401, 404, 503)}}},
    }
