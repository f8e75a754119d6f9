"""Verified send-as (issue 18): the Gmail account's send-as list (users.settings.sendAs.list,
read through the real google client from the fake Gmail) decides which sender_email a POST may
use; a verified alias is sent with its account's credentials; the list is read again every
SEND_AS_CHECK_INTERVAL by a runner."""
from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet

from runner_helpers import SENDER, count_rows, fast, running, wait_for, wait_job_done
from test_api_enqueue import assert_nothing_written, body, post

ALIAS = "news@example.com"


@pytest.fixture()
def domain_key(make_key) -> str:
    return make_key(senders=["*@example.com"])


@pytest.fixture()
def authorised(dao, fake, run, tmp_path, monkeypatch):
    """`mailjobs auth SENDER --token-file` with the Gmail transport against the fake: the grant
    is stored and the send-as list read at once. Returns runner settings sharing the key."""
    token_key = Fernet.generate_key().decode()
    for name, value in {"TOKEN_ENCRYPTION_KEY": token_key, "MAIL_TRANSPORT": "gmail",
                        "GMAIL_API_ENDPOINT": fake.url, "GMAIL_TOKEN_URI": fake.token_uri}.items():
        monkeypatch.setenv(name, value)
    fake.add_alias(SENDER, ALIAS, "accepted")
    fake.add_alias(SENDER, "pending@example.com", "pending")
    token = tmp_path / "token.json"
    token.write_text(json.dumps(fake.authorized_user_info(SENDER)))
    out = run("auth", SENDER, "--token-file", str(token))
    assert out.exit_code == 0, out.output
    assert f"{SENDER} may send as: {SENDER}, {ALIAS}" in out.output
    return fast(dao.settings, mail_transport="gmail", gmail_api_endpoint=fake.url,
                gmail_token_uri=fake.token_uri, gmail_timeout=2.0,
                token_encryption_key=token_key)


def test_a_verified_alias_is_accepted_and_sent_from_its_account(client, dao, fake, domain_key,
                                                                  authorised):
    answer = post(client, domain_key, body(2, sender_email=ALIAS))
    assert answer.status_code == 202, answer.json
    with running(authorised, dao):
        assert wait_job_done(dao, answer.json["job_id"]) == "completed"
    assert fake.count() == 2
    assert {s.account for s in fake.sent} == {SENDER}          # the account's credentials
    assert {s.message["From"].addresses[0].addr_spec for s in fake.sent} == {ALIAS}
    assert dao.sender_credentials(ALIAS) is None               # nothing stored for the alias


@pytest.mark.parametrize("sender", ["typo@example.com", "pending@example.com"])
def test_an_address_that_is_not_a_verified_alias_is_a_400_naming_sender_email(
        client, dao, domain_key, authorised, sender):
    answer = post(client, domain_key, body(2, sender_email=sender))
    assert answer.status_code == 400, answer.json
    assert answer.json["error"] == "sender_not_verified"
    assert answer.json["field"] == "sender_email"
    assert answer.json["allowed"] == [ALIAS, SENDER]
    assert sender in answer.json["message"] and ALIAS in answer.json["message"]
    assert_nothing_written(dao)


def test_the_allowed_list_names_only_addresses_the_key_may_send_as(client, dao, make_key,
                                                                   authorised):
    narrow = make_key(senders=[SENDER, "typo@example.com"])
    answer = post(client, narrow, body(1, sender_email="typo@example.com"))
    assert answer.status_code == 400 and answer.json["allowed"] == [SENDER]


def test_an_account_whose_list_lacks_its_own_address_is_refused(client, dao, fake, domain_key,
                                                                authorised):
    """The grant stored for ops@ belongs to another mailbox (signed in as the wrong user): its
    list does not name ops@, so ops@ is refused rather than rewritten by Gmail later."""
    dao.save_send_as(SENDER, [("someone@example.com", True, None)], 86400)
    answer = post(client, domain_key, body(1))
    assert answer.status_code == 400 and answer.json["allowed"] == ["someone@example.com"]


def test_with_no_list_known_any_allowed_sender_is_accepted_as_before(client, dao, domain_key):
    """The outbox transport, or a list never read: nothing to check against."""
    assert post(client, domain_key, body(1, sender_email="anyone@example.com")).status_code == 202
    assert count_rows(dao, "send_as_addresses") == 0


def test_the_runner_reads_every_list_again_each_send_as_check_interval(dao, fake, authorised):
    """Time is driven through the setting (1 s), not slept: the runner's periodic check reads
    the list again and a new alias becomes allowed, a removed one not."""
    reads = len(fake.send_as_reads)
    fake.add_alias(SENDER, "later@example.com", "accepted")
    del fake._accounts[SENDER].aliases[ALIAS]
    settings = authorised.with_overrides(send_as_check_interval=1)
    dao.save_send_as(SENDER, [(SENDER, True, None), (ALIAS, False, "accepted")], 1)

    def allowed() -> set[str]:
        return {r[2] for r in dao.send_as_for(SENDER) + dao.send_as_for("later@example.com")
                if r[0] == "list" and (r[3] or r[4] == "accepted")}

    with running(settings, dao):
        wait_for(lambda: "later@example.com" in allowed(), message="the list read again")
        wait_for(lambda: len(fake.send_as_reads) >= reads + 2, message="a second daily read")
    assert ALIAS not in allowed()


def test_a_grant_without_the_settings_scope_keeps_the_post_unchecked_and_says_why(
        client, dao, fake, run, tmp_path, monkeypatch, domain_key):
    token_key = Fernet.generate_key().decode()
    for name, value in {"TOKEN_ENCRYPTION_KEY": token_key, "MAIL_TRANSPORT": "gmail",
                        "GMAIL_API_ENDPOINT": fake.url, "GMAIL_TOKEN_URI": fake.token_uri}.items():
        monkeypatch.setenv(name, value)
    fake._accounts[SENDER].scopes = ["https://www.googleapis.com/auth/gmail.send"]
    info = fake.authorized_user_info(SENDER)
    token = tmp_path / "token.json"
    token.write_text(json.dumps(info))
    out = run("auth", SENDER, "--token-file", str(token))
    assert out.exit_code == 0, out.output
    assert "could not read the send-as addresses" in out.output
    with dao.transaction() as cur:
        cur.execute("SELECT send_as_read_at, send_as_error FROM senders WHERE email = %s",
                    (SENDER,))
        read_at, error = cur.fetchone()
    assert read_at is None and "gmail.settings.basic" in error
    assert post(client, domain_key, body(1, sender_email="typo@example.com")).status_code == 202


def test_addresses_compare_case_insensitively(client, dao, domain_key, authorised):
    assert post(client, domain_key, body(1, sender_email="News@Example.COM")).status_code == 202
    assert post(client, domain_key, body(1, sender_email="OPS@example.com")).status_code == 202
