"""One-click unsubscribe (RFC 8058): the List-Unsubscribe headers and {{ unsubscribe_url }} in
the raw messages the fake Gmail received, the public POST and GET /u/<token> flows, and forged,
tampered, foreign and expired tokens refused. Real MariaDB, real google client."""
from __future__ import annotations

import email
import email.policy
import re
import time

import pytest

from mailjobs.api_server import create_app
from mailjobs.deliverability.unsubscribe import Tokens
from runner_helpers import count_rows, recipients, running, wait_job_done
from test_api_enqueue import body, post

BASE = "https://mail.example.com"
SECRET = "unsubscribe-test-secret"


@pytest.fixture()
def settings(gmail_settings):
    return gmail_settings.with_overrides(unsubscribe_base_url=BASE + "/", secret_key=SECRET)


@pytest.fixture()
def client(dao, settings):
    """The API of a server with UNSUBSCRIBE_BASE_URL set (replaces conftest's client)."""
    return create_app(settings, dao).test_client()


def sent_job(client, key, dao, settings, n=2, **changes):
    r = post(client, key, body(n, **changes))
    assert r.status_code == 202, r.json
    with running(settings, dao):
        assert wait_job_done(dao, r.json["job_id"]) == "completed"
    return r.json["job_id"]


def message_to(fake, address) -> email.message.EmailMessage:
    (got,) = fake.sent_to(address)
    return email.message_from_bytes(got.raw, policy=email.policy.default)


def token_of(msg) -> str:
    return re.fullmatch(rf"<{re.escape(BASE)}/u/([A-Za-z0-9_.-]+)>",
                        str(msg["List-Unsubscribe"])).group(1)


def suppressions(dao):
    with dao.transaction() as cur:
        cur.execute("SELECT email, reason, job_id, recipient_id FROM suppressions ORDER BY id")
        return list(cur.fetchall())


def test_every_message_carries_the_one_click_headers_and_the_template_gets_the_url(
        client, key, dao, fake, settings):
    b = body(2)
    b["template"]["text"] = "Hello {{ name }}. Unsubscribe: {{ unsubscribe_url }}"
    b["template"]["html"] = '<p>Hi</p><a href="{{ unsubscribe_url }}">unsubscribe</a>'
    job_id = sent_job(client, key, dao, settings, **{"template": b["template"]})
    rows = {r.to_email: r for r in recipients(dao, job_id)}
    tokens = set()
    for address, r in rows.items():
        msg = message_to(fake, address)
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        token = token_of(msg)
        tokens.add(token)
        assert Tokens(SECRET, 90).check(token) == (r.id, dao.job(job_id).api_key_id)
        url = f"{BASE}/u/{token}"
        assert msg.get_body(("plain",)).get_content().strip().endswith(f"Unsubscribe: {url}")
        assert f'href="{url}"' in msg.get_body(("html",)).get_content()
        assert "\r\nList-Unsubscribe: <" in got_raw(fake, address)  # one line, not folded
    assert len(tokens) == 2


def got_raw(fake, address) -> str:
    return fake.sent_to(address)[0].raw.decode()


def test_one_click_post_suppresses_at_once_and_a_later_job_skips_the_address(
        client, key, dao, fake, settings):
    job_id = sent_job(client, key, dao, settings)
    token = token_of(message_to(fake, "user0@example.com"))
    started = time.monotonic()
    r = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})  # no API key
    assert time.monotonic() - started < 2
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert "You are unsubscribed" in r.text and "user0@example.com" in r.text
    assert r.headers["Cache-Control"] == "no-store"
    user0 = next(x for x in recipients(dao, job_id) if x.to_email == "user0@example.com")
    assert suppressions(dao) == [("user0@example.com", "unsubscribed", job_id, user0.id)]
    assert client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert count_rows(dao, "suppressions") == 1       # twice is still once

    again = post(client, key, body(3))
    assert (again.status_code, again.json["suppressed"]) == (202, 1)
    statuses = {x.to_email: x.status for x in recipients(dao, again.json["job_id"])}
    assert statuses["user0@example.com"] == "suppressed"


def test_get_shows_a_confirmation_page_with_a_button_and_changes_nothing(
        client, key, dao, fake, settings):
    sent_job(client, key, dao, settings, n=1)
    token = token_of(message_to(fake, "user0@example.com"))
    page = client.get(f"/u/{token}")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert '<form method="post"' in page.text and "<button" in page.text
    assert "Content-Security-Policy" in page.headers
    assert count_rows(dao, "suppressions") == 0       # link scanners GET: nothing happens
    done = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and count_rows(dao, "suppressions") == 1


def test_forged_tampered_foreign_and_expired_tokens_are_refused(client, key, dao, fake,
                                                                 settings, make_key):
    job_id = sent_job(client, key, dao, settings, n=2)
    rows = sorted(recipients(dao, job_id), key=lambda r: r.id)
    good = token_of(message_to(fake, rows[0].to_email))
    payload, stamp, signature = good.split(".")
    owner = dao.job(job_id).api_key_id
    other_key = api_key_id(dao, make_key(senders=["*"]))
    forged = [
        "garbage",
        f"{payload}.{stamp}.{signature[:-2]}xx",                         # signature changed
        # the next recipient's id with the old signature: ids cannot be enumerated
        ".".join([Tokens(SECRET, 90).make(rows[1].id, owner).split(".")[0], stamp, signature]),
        Tokens("another-secret", 90).make(rows[0].id, owner),            # not our key
        Tokens(SECRET, 90).make(rows[0].id, other_key),                  # signed, wrong owner
        Tokens(SECRET, 90).make(10**9, owner),                           # signed, no such row
    ]
    for token in forged:
        for method in (client.get, client.post):
            r = method(f"/u/{token}")
            assert r.status_code == 400, (token, method)
            assert r.mimetype == "text/html" and "not valid" in r.text
    expired = Tokens(SECRET, 90).make(rows[0].id, owner, issued_at=time.time() - 91 * 86400)
    r = client.post(f"/u/{expired}")
    assert r.status_code == 400 and "expired" in r.text
    assert client.get(f"/u/{expired}").status_code == 400
    assert count_rows(dao, "suppressions") == 0
    still_valid = Tokens(SECRET, 90).make(rows[0].id, owner, issued_at=time.time() - 89 * 86400)
    assert client.post(f"/u/{still_valid}").status_code == 200


def api_key_id(dao, key: str) -> int:
    prefix = key.split("_")[1]
    return next(k.id for k in dao.api_keys() if k.prefix == prefix)


def test_a_job_may_opt_out_and_a_server_without_a_base_url_refuses_true(
        client, key, dao, fake, settings, app):
    sent_job(client, key, dao, settings, n=1, unsubscribe=False)
    assert "List-Unsubscribe" not in message_to(fake, "user0@example.com")
    plain = app.test_client()                        # conftest's app: no UNSUBSCRIBE_BASE_URL
    r = post(plain, key, body(1, unsubscribe=True))
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (400, "validation_error", "unsubscribe")
    assert post(plain, key, body(1)).status_code == 202   # unset and not asked: fine, no header


def test_unsubscribe_url_without_one_click_must_be_provided(client, key, dao, fake, settings,
                                                           app):
    plain = app.test_client()
    b = body(1)
    b["template"]["text"] = "Bye: {{ unsubscribe_url }}"
    r = post(plain, key, b)
    assert (r.status_code, r.json["error"], r.json["field"]) == \
        (400, "missing_variables", "unsubscribe")
    assert "unsubscribe_url" in r.json["message"]
    off = post(client, key, {**b, "unsubscribe": False})
    assert (off.status_code, off.json["field"]) == (400, "unsubscribe")
    # the client's own link, as an ordinary variable: accepted and used as given
    own = {**b, "variables": {**b["variables"], "unsubscribe_url": "https://crm.example/u/1"}}
    r = post(plain, key, own)
    assert r.status_code == 202
    with running(settings.with_overrides(unsubscribe_base_url=""), dao):
        assert wait_job_done(dao, r.json["job_id"]) == "completed"
    msg = message_to(fake, "user0@example.com")
    assert msg.get_body(("plain",)).get_content().strip() == "Bye: https://crm.example/u/1"
    assert "List-Unsubscribe" not in msg


def test_with_one_click_on_our_link_wins_over_a_variable(client, key, dao, fake, settings):
    b = body(1)
    b["template"]["text"] = "Bye: {{ unsubscribe_url }}"
    b["recipients"][0]["variables"] = {"unsubscribe_url": "https://evil.example/"}
    sent_job(client, key, dao, settings, n=1, template=b["template"],
             recipients=b["recipients"])
    msg = message_to(fake, "user0@example.com")
    text = msg.get_body(("plain",)).get_content()
    assert f"Bye: {BASE}/u/{token_of(msg)}" in text and "evil" not in text
