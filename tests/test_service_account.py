"""Sending as many addresses of one domain (issue 18): a service-account key with domain-wide
delegation, stored by `mailjobs auth SENDER --service-account key.json`, used through the real
google-auth JWT bearer grant against the fake Gmail, which verifies the JWT's RS256 signature
(a key pair made here), iss, aud, sub and scopes; a refused delegation pauses the sender."""
from __future__ import annotations

import json

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailjobs.transports.credentials import CredentialStore
from runner_helpers import SENDER, fast, recipients, running, wait_for, wait_job_done
from test_api_enqueue import body, post

CLIENT = "mailer@school-project.iam.gserviceaccount.com"
SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"


def key_pair():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return private.public_key(), pem


def key_json(pem: str, client_email: str = CLIENT) -> dict:
    """A key file as the Cloud console writes it; its token_uri is Google's (GMAIL_TOKEN_URI
    must win, or the test would try to reach Google)."""
    return {"type": "service_account", "project_id": "school-project", "private_key_id": "k1",
            "private_key": pem, "client_email": client_email, "client_id": "10987654321",
            "token_uri": "https://oauth2.googleapis.com/token"}


@pytest.fixture()
def delegated(dao, fake, tmp_path, monkeypatch):
    """Runner settings against the fake (no OAuth grant stored for anyone), the encryption key
    shared with the CLI, a key pair granted delegation for example.com, and its key file."""
    token_key = Fernet.generate_key().decode()
    monkeypatch.setenv("TOKEN_ENCRYPTION_KEY", token_key)
    settings = fast(dao.settings, mail_transport="gmail", gmail_api_endpoint=fake.url,
                    gmail_token_uri=fake.token_uri, gmail_timeout=2.0,
                    token_encryption_key=token_key)
    public, pem = key_pair()
    fake.add_service_account(CLIENT, public, "example.com")
    path = tmp_path / "key.json"
    path.write_text(json.dumps(key_json(pem)))
    return settings, path


def test_a_domain_key_sends_as_its_addresses_through_the_jwt_bearer_grant(
        client, key, dao, fake, run, delegated):
    settings, path = delegated
    out = run("auth", "*@example.com", "--service-account", str(path))
    assert out.exit_code == 0, out.output
    assert f"stored the service account {CLIENT} for *@example.com" in out.output
    assert "client ID 10987654321" in out.output and SEND_SCOPE in out.output
    job_id = post(client, key, body(3)).json["job_id"]
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.count() == 3 and {s.account for s in fake.sent} == {SENDER}
    assert {r.status for r in recipients(dao, job_id)} == {"sent"}
    grant = fake.jwt_grants[0]      # what the fake verified and accepted
    assert (grant["iss"], grant["sub"]) == (CLIENT, SENDER)
    assert SEND_SCOPE in grant["scope"].split()
    assert dao.sender_credentials(SENDER) is None      # no OAuth grant of its own was needed
    assert dao.senders()[0]["has_credentials"]          # the senders list counts the key
    stored = dao.delegated_key(SENDER)
    assert stored[0] == "*@example.com" and b"PRIVATE KEY" not in stored[1]   # encrypted


def test_a_refused_delegation_pauses_the_sender_with_a_readable_reason(
        client, key, dao, fake, run, delegated):
    settings, path = delegated
    assert run("auth", "*@example.com", "--service-account", str(path)).exit_code == 0
    fake.revoke_delegation(CLIENT)
    job_id = post(client, key, body(2)).json["job_id"]
    with running(settings, dao):
        wait_for(lambda: dao.job(job_id).status == "paused", message="the job paused")
    job = dao.job(job_id)
    assert "unauthorized_client" in job.status_reason and CLIENT in job.status_reason
    assert "Domain-wide delegation" in job.status_reason
    (sender,) = dao.senders()
    assert sender["auth_state"] == "auth_revoked"
    assert fake.count() == 0
    assert {r.status for r in recipients(dao, job_id)} <= {"queued", "retrying"}
    # the admin grants it again; storing the key again resumes the sender's jobs
    fake._delegated[CLIENT].revoked = False
    out = run("auth", "*@example.com", "--service-account", str(path))
    assert "1 paused job(s) resumed" in out.output
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert fake.count() == 2


def test_a_key_the_fake_does_not_know_is_refused_by_its_signature(client, key, dao, fake, run,
                                                                 delegated, tmp_path):
    settings, _ = delegated
    _, other_pem = key_pair()          # same client_email, another private key
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(key_json(other_pem)))
    assert run("auth", SENDER, "--service-account", str(forged)).exit_code == 0
    job_id = post(client, key, body(1)).json["job_id"]
    with running(settings, dao):
        wait_for(lambda: dao.job(job_id).status == "paused", message="the job paused")
    assert "Invalid JWT Signature" in dao.job(job_id).status_reason
    assert fake.jwt_grants == [] and fake.count() == 0


def test_an_address_key_wins_over_its_domain_key(client, key, dao, fake, delegated, tmp_path):
    settings, path = delegated
    store = CredentialStore(settings, dao)
    _, unknown_pem = key_pair()
    store.store_delegated("*@example.com", key_json(unknown_pem, "stranger@x.iam.gserviceaccount"
                                                                  ".com"), [SEND_SCOPE])
    store.store_delegated(SENDER, json.loads(path.read_text()), [SEND_SCOPE])
    assert dao.delegated_key(SENDER)[0] == SENDER
    assert dao.delegated_key("other@example.com")[0] == "*@example.com"
    assert dao.delegated_key("ops@example.org") is None
    job_id = post(client, key, body(1)).json["job_id"]
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert [g["iss"] for g in fake.jwt_grants] == [CLIENT]


def test_auth_refuses_what_is_not_a_service_account_key_or_a_sender(run, delegated, tmp_path):
    _, path = delegated
    oauth = tmp_path / "token.json"
    oauth.write_text(json.dumps({"refresh_token": "x", "client_id": "y"}))
    out = run("auth", SENDER, "--service-account", str(oauth))
    assert out.exit_code != 0 and "not a service-account key" in out.output
    for bad in ("*@", "example.com", "*@exa mple.com"):
        out = run("auth", bad, "--service-account", str(path))
        assert out.exit_code != 0 and "give an address or '*@domain'" in out.output, bad


def test_bounces_are_read_for_a_sender_that_has_only_a_delegated_domain_key(
        client, key, dao, fake, run, delegated):
    """A domain key ('*@example.com') is all the sender has: the runner's bounce check reads
    its mailbox through the delegation (the JWT's sub is the sender) and marks the recipient."""
    from test_bounces import sample

    settings, path = delegated
    assert run("auth", "*@example.com", "--service-account", str(path)).exit_code == 0
    job_id = post(client, key, body(2)).json["job_id"]
    with running(settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert dao.sender_credentials(SENDER) is None
    gone = next(r for r in recipients(dao, job_id) if r.to_email == "user0@example.com")
    fake.deliver(SENDER, sample("gmail_hard_5xx.eml", gone.message_id, gone.to_email))
    with running(settings.with_overrides(bounce_check_interval=1), dao):
        wait_for(lambda: {r.id: r.status for r in recipients(dao, job_id)}[gone.id] == "bounced",
                 message="the bounce read from the delegated sender's mailbox")
    assert any(g["sub"] == SENDER and "gmail.readonly" in g["scope"] for g in fake.jwt_grants)
