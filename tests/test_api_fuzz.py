"""Property-based fuzzing of every operation in /openapi.json with schemathesis (4.x).

Schemathesis reads the OpenAPI document the app serves, generates requests for each operation
(its examples, a coverage pass of boundary and invalid values, then random valid and invalid
bodies, query strings, headers and path parameters) and sends them straight to the Flask app over
WSGI, against the real MariaDB of conftest.py. Every answer must:

- not be a 5xx (`not_a_server_error`);
- use a status code the operation documents (`status_code_conformance`);
- carry the documented content type and a body matching the schema documented for that status
  (`content_type_conformance`, `response_schema_conformance`).

Requests carry a valid API key: once a sender key (senders ["*"]), once an operator key. Before
each operation is fuzzed, one job of that key and one of another key exist, and generated
`job_id`s are often replaced by their ids, so the job operations are exercised past their 404.

Generation is bounded and deterministic (fixed seed, derandomized Hypothesis, no example
database) so the file is quick and CI runs are reproducible.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mailjobs.web.openapi import openapi_document

MAX_EXAMPLES = 40
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")
# conftest's `dao` fixture truncates every table, so the two jobs `seeded_key` stores get ids 1, 2.
SEEDED_JOB_IDS = (1, 2)
ENQUEUE = "/api/jobs/send_template_emails"
VALID_ADDRESSES = ("ops@example.com", "O'Brien+tag@Example.org", "user@bücher.example")
JOB = {"sender_email": "ops@example.com", "from_name": "Ops",
       "template": {"subject": "Hi {{ name }}", "text": "Hello {{ name }}"},
       "recipients": [{"email": "a@example.com", "name": "A"},
                      {"email": "b@example.com", "name": "B"}]}

CONFIG = schemathesis.Config.from_dict({
    "seed": 20240611,
    "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
                   # the key is sent by the test; do not generate random X-API-Key values
                   "with-security-parameters": False},
    "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
})

# The document is loaded at collection time (schemathesis's lazy `from_fixture` loader does not
# work with pytest 9.2); `seeded_key` checks that /openapi.json serves exactly this document.
schema = schemathesis.openapi.from_dict(openapi_document(), config=CONFIG)


@schema.hook
def flatmap_path_parameters(context, path_parameters):
    """Use a seeded job's id for about two thirds of the generated job_ids."""
    if not path_parameters or "job_id" not in path_parameters:
        return st.just(path_parameters)
    return st.sampled_from([path_parameters] + [{**path_parameters, "job_id": job_id}
                                                 for job_id in SEEDED_JOB_IDS])


@schema.hook
def flatmap_body(context, body):
    """Make about half the enqueue bodies pass the checks the schema does not express (random
    strings are never deliverable addresses, `[]` is no recipient list, an inline template needs
    html or text), so the fuzzing reaches templating, storage and the 202 answer too."""
    if context.operation.path != ENQUEUE or not isinstance(body, dict):
        return st.just(body)
    return st.one_of(st.just(body), st.sampled_from(VALID_ADDRESSES).map(
        lambda address: _deliverable(body, address)))


def _deliverable(body: dict, address: str) -> dict:
    """`body` with its string addresses set to `address`, at least one recipient and an inline
    template with a text part (fields of a wrong type, which must be rejected, are left alone)."""
    body = dict(body)
    for name in ("sender_email", "reply_to"):
        if isinstance(body.get(name), str):
            body[name] = address
    if body.get("recipients") == []:
        body["recipients"] = [{"email": address}]
    if isinstance(body.get("recipients"), list):
        body["recipients"] = [
            {**r, "email": f"{i}.{address}"} if isinstance(r, dict) and isinstance(r.get("email"), str)
            else r for i, r in enumerate(body["recipients"])]
    template = body.get("template")
    if template is None:
        template = {"subject": "Hi"}
    if isinstance(template, dict):
        body.pop("template_name", None)
        body.pop("template_version", None)
        if template.get("html") is None and template.get("text") is None:
            template = {**template, "text": "Hello"}
        body["template"] = template
    return body


@pytest.fixture(params=["sender_key", "operator_key"])
def seeded_key(request, client, make_key) -> str:
    """An API key (sender or operator), with one job of its own and one of another key stored."""
    assert client.get("/openapi.json").json == openapi_document()
    api_key = make_key(senders=["*"], operator=request.param == "operator_key",
                       name=request.param)
    other_key = make_key(senders=["*"], name="someone_else")
    job_ids = []
    for k in (api_key, other_key):
        r = client.post(ENQUEUE, json=JOB, headers={"X-API-Key": k})
        assert r.status_code == 202, r.json
        job_ids.append(r.json["job_id"])
    assert tuple(job_ids) == SEEDED_JOB_IDS
    return api_key


@schema.parametrize()
# DB-backed requests are slow for Hypothesis's taste; the fixtures are deliberately shared by all
# the examples of one operation (the key and the seeded jobs stay valid throughout).
@settings(suppress_health_check=list(HealthCheck))
def test_no_endpoint_answers_5xx_or_breaks_its_schema(case, app, seeded_key):
    case.call_and_validate(app=app, headers={"X-API-Key": seeded_key})
