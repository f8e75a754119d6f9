"""Bounce detection: delivery status notifications read back from the sender's mailbox through
the real google client against tests/fake_gmail.py, parsed (dsn.py), matched to their
recipients by the stored Message-ID, hard bounces suppressed; the runner runs the check at
BOUNCE_CHECK_INTERVAL. The DSNs are the hand-written samples in tests/dsn_samples/."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import bounces
import dsn
import transports
from runner_helpers import SENDER, count_rows
from runner_helpers import recipients, running, wait_for, wait_job_done
from test_api_enqueue import body, post
from settings import Settings
from transport_base import SendError

SAMPLES = Path(__file__).parent / "dsn_samples"


def sample(name: str, message_id: str = "<mj.1.2.ab@example.com>",
           recipient: str = "gone@example.net", sender: str = SENDER) -> bytes:
    raw = (SAMPLES / name).read_bytes()
    return (raw.replace(b"@@MESSAGE_ID@@", message_id.encode())
            .replace(b"@@RECIPIENT@@", recipient.encode()).replace(b"@@SENDER@@", sender.encode()))


def sql(dao, statement: str, args=()) -> list[tuple]:
    with dao.transaction() as cur:
        cur.execute(statement, args)
        return list(cur.fetchall())


# --- parsing the samples -------------------------------------------------------------------
@pytest.mark.parametrize("name, status, action, kind, diagnostic", [
    ("gmail_hard_5xx.eml", "5.1.1", "failed", "hard",
     "The email account that you tried to reach does not exist"),
    ("mta_hard_5xx.eml", "5.1.1", "failed", "hard",
     "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown"),
    ("text_only_5xx.eml", "5.1.1", None, "hard",
     "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown"),
    ("soft_4xx.eml", "4.2.2", "delayed", "soft", "452 4.2.2 Mailbox full"),
])
def test_each_sample_is_parsed(name, status, action, kind, diagnostic):
    bounce = dsn.parse(sample(name))
    assert bounce is not None
    assert (bounce.status, bounce.action, bounce.kind) == (status, action, kind)
    assert bounce.recipient == "gone@example.net"
    assert bounce.message_id == "<mj.1.2.ab@example.com>"
    assert diagnostic in bounce.diagnostic
    assert bounce.error_code == ("bounce_5xx" if kind == "hard" else "bounce_4xx")
    assert bounce.error.startswith(f"{kind} bounce {status}") and diagnostic in bounce.error


def test_the_original_message_id_falls_back_to_the_dsn_fields_then_in_reply_to():
    raw = sample("gmail_hard_5xx.eml")
    # without the returned headers part: Gmail's X-Original-Message-ID
    head, _, _ = raw.partition(b"--000000000000c9a3e0060eb3a5c1\nContent-Type: text/rfc822")
    cut = head + b"--000000000000c9a3e0060eb3a5c1--\n"
    assert dsn.parse(cut).message_id == "<mj.1.2.ab@example.com>"
    # ... nor that field: the report's In-Reply-To
    no_field = cut.replace(b"X-Original-Message-ID: <mj.1.2.ab@example.com>\n", b"")
    assert b"X-Original-Message-ID" not in no_field
    assert dsn.parse(no_field).message_id == "<mj.1.2.ab@example.com>"
    assert dsn.parse(no_field.replace(b"In-Reply-To: <mj.1.2.ab@example.com>\n", b"")
                     .replace(b"References: <mj.1.2.ab@example.com>\n", b"")).message_id is None


def test_success_reports_and_ordinary_mail_are_not_bounces():
    delivered = sample("mta_hard_5xx.eml").replace(b"Action: failed", b"Action: delivered") \
        .replace(b"Status: 5.1.1", b"Status: 2.0.0").replace(
            b"Diagnostic-Code: smtp; 550 5.1.1", b"Diagnostic-Code: smtp; 250 2.0.0")
    assert dsn.parse(delivered) is None
    human = (b"From: Postmaster <postmaster@example.net>\nTo: ops@example.com\n"
             b"Subject: Hello\n\nCould you call me back about the invoice? Room 550-12.\n")
    assert dsn.parse(human) is None
    newsletter = b"From: news@example.org\nSubject: Weekly\n\n5.1.1 is our version number\n"
    assert dsn.parse(newsletter) is None
    assert dsn.parse(b"\x00\xff garbage \n\n\n") is None


# --- end to end ----------------------------------------------------------------------------
def _sent_job(client, key, dao, gmail_settings, n: int) -> dict[str, object]:
    job_id = post(client, key, body(n)).json["job_id"]
    with running(gmail_settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    return {r.to_email: r for r in recipients(dao, job_id)}


def _mailbox(settings, dao):
    return transports.transport_factory(settings, dao)()


def _check_now(dao, settings) -> dict[str, int]:
    """One bounce check round, due at once (as if BOUNCE_CHECK_INTERVAL had passed)."""
    sql(dao, "UPDATE senders SET bounce_check_due_at = NULL")
    mailbox = _mailbox(settings, dao)
    try:
        return bounces.check_all(settings.with_overrides(bounce_check_interval=600), dao, mailbox)
    finally:
        mailbox.close()


def test_the_runner_reads_bounces_marks_recipients_and_suppresses_hard_ones(
        client, key, dao, fake, gmail_settings, caplog):
    rows = _sent_job(client, key, dao, gmail_settings, 5)
    job_id = rows["user0@example.com"].job_id
    for name, i in (("gmail_hard_5xx.eml", 0), ("mta_hard_5xx.eml", 1),
                    ("text_only_5xx.eml", 2), ("soft_4xx.eml", 3)):
        r = rows[f"user{i}@example.com"]
        fake.deliver(SENDER, sample(name, r.message_id, r.to_email))
    # not bounces of ours: a DSN about a message mailjobs never sent, and a person's mail
    fake.deliver(SENDER, sample("mta_hard_5xx.eml", "<someone.else@example.com>"))
    fake.deliver(SENDER, b"From: Ann <ann@example.org>\nSubject: hi\n\nhello\n")

    with caplog.at_level(logging.INFO, logger="mailjobs.bounces"), \
            running(gmail_settings.with_overrides(bounce_check_interval=1), dao):
        wait_for(lambda: count_rows(dao, "bounce_messages") == 5, 20, message="5 DSNs read")

    after = {r.to_email: r for r in recipients(dao, job_id)}
    for i, status in ((0, "5.1.1"), (1, "5.1.1"), (2, "5.1.1")):
        r = after[f"user{i}@example.com"]
        assert (r.status, r.error_code) == ("bounced", "bounce_5xx")
        assert r.error.startswith(f"hard bounce {status}") and "user" in r.error
    soft = after["user3@example.com"]
    assert (soft.status, soft.error_code) == ("bounced", "bounce_4xx")
    assert "4.2.2" in soft.error and "Mailbox full" in soft.error
    assert after["user4@example.com"].status == "sent"
    # hard bounces are suppressed for the job's key, with where they came from; soft ones not
    listed = sql(dao, "SELECT email, reason, job_id, recipient_id, detail FROM suppressions "
                      "ORDER BY email")
    assert [(e, reason, j, rid) for e, reason, j, rid, _ in listed] == [
        (f"user{i}@example.com", "hard_bounce", job_id, rows[f"user{i}@example.com"].id)
        for i in range(3)]
    assert all("5.1.1" in detail for *_, detail in listed)
    outcomes = sorted(o for (o,) in sql(dao, "SELECT outcome FROM bounce_messages"))
    assert outcomes == ["hard", "hard", "hard", "soft", "unmatched"]
    # the person's mail is not from mailer-daemon: never even fetched
    assert len([p for m, p, s in fake.requests if m == "GET" and "format=raw" in p]) == 5
    # the job stays completed; its counts and errors show the bounces
    job = client.get(f"/api/jobs/{job_id}", headers={"X-API-Key": key}).json
    assert job["status"] == "completed"
    assert job["counts"] == {"bounced": 4, "sent": 1}
    assert {e["error_code"]: e["count"] for e in job["errors"]} == {"bounce_5xx": 3,
                                                                    "bounce_4xx": 1}
    (checked,) = sql(dao, "SELECT bounces_checked_at FROM senders WHERE email=%s", (SENDER,))
    assert checked[0] is not None
    assert any("bounced" in m and "address suppressed" in m for m in caplog.messages)


def test_a_later_job_skips_a_hard_bounced_address(client, key, dao, fake, gmail_settings):
    rows = _sent_job(client, key, dao, gmail_settings, 2)
    r = rows["user0@example.com"]
    fake.deliver(SENDER, sample("gmail_hard_5xx.eml", r.message_id, r.to_email))
    assert _check_now(dao, gmail_settings) == {"hard": 1}

    again = post(client, key, body(3))
    assert again.status_code == 202
    assert (again.json["recipients"], again.json["suppressed"]) == (3, 1)
    job_id = again.json["job_id"]
    with running(gmail_settings, dao):
        assert wait_job_done(dao, job_id) == "completed"
    later = {x.to_email: x for x in recipients(dao, job_id)}
    assert (later["user0@example.com"].status, later["user0@example.com"].error_code) == \
        ("suppressed", "suppressed")
    assert "hard_bounce" in later["user0@example.com"].error
    assert {later[f"user{i}@example.com"].status for i in (1, 2)} == {"sent"}
    assert len(fake.sent_to("user0@example.com")) == 1     # the first job's message only
    assert dao.job(job_id, with_counts=True).counts == {"sent": 2, "suppressed": 1}


def test_nothing_is_processed_twice(client, key, dao, fake, gmail_settings):
    rows = _sent_job(client, key, dao, gmail_settings, 1)
    r = rows["user0@example.com"]
    fake.deliver(SENDER, sample("mta_hard_5xx.eml", r.message_id, r.to_email))
    assert _check_now(dao, gmail_settings) == {"hard": 1}
    fetches = len([p for m, p, s in fake.requests if "format=raw" in p])
    # the next check overlaps the last one (index lag): the same DSN is listed, not read again
    assert _check_now(dao, gmail_settings) == {}
    assert len([p for m, p, s in fake.requests if "format=raw" in p]) == fetches
    assert count_rows(dao, "bounce_messages") == 1 and count_rows(dao, "suppressions") == 1
    # and a DSN older than the overlap before the last check is not even listed
    fake.deliver(SENDER, sample("soft_4xx.eml", r.message_id, r.to_email),
                 at=time.time() - 3600)
    assert _check_now(dao, gmail_settings) == {}
    lists = [p for m, p, s in fake.requests if m == "GET" and "q=" in p and "after" in p]
    assert lists and all("mailer-daemon" in p for p in lists)


def test_a_hard_bounce_after_a_soft_one_wins_and_not_the_other_way(client, key, dao, fake,
                                                                   gmail_settings):
    rows = _sent_job(client, key, dao, gmail_settings, 2)
    a, b = rows["user0@example.com"], rows["user1@example.com"]
    fake.deliver(SENDER, sample("soft_4xx.eml", a.message_id, a.to_email))
    fake.deliver(SENDER, sample("mta_hard_5xx.eml", b.message_id, b.to_email))
    _check_now(dao, gmail_settings)
    fake.deliver(SENDER, sample("gmail_hard_5xx.eml", a.message_id, a.to_email))
    fake.deliver(SENDER, sample("soft_4xx.eml", b.message_id, b.to_email))
    assert _check_now(dao, gmail_settings) == {"hard": 1, "soft": 1}
    after = {x.to_email: x for x in recipients(dao, a.job_id)}
    assert after[a.to_email].error_code == "bounce_5xx"     # upgraded
    assert after[b.to_email].error_code == "bounce_5xx"     # not downgraded
    assert "5.1.1" in after[b.to_email].error
    assert {e for (e,) in sql(dao, "SELECT email FROM suppressions")} == {a.to_email, b.to_email}


def test_one_runner_checks_a_sender_per_interval(dao, fake, gmail_settings):
    assert dao.claim_bounce_check(SENDER, 600) == (True, None)
    assert dao.claim_bounce_check(SENDER, 600) == (False, None)
    sql(dao, "UPDATE senders SET bounce_check_due_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")
    assert dao.claim_bounce_check(SENDER, 600)[0] is True
    assert dao.claim_bounce_check("nobody@example.com", 600)[0] is False   # no such sender


class _Failing:
    def list_message_ids(self, sender, query, limit=0):
        raise SendError("sender_config", "gmail_403", "Gmail 403 insufficientPermissions: "
                        "Request had insufficient authentication scopes.", status=403)

    def get_raw(self, sender, gmail_id):
        raise AssertionError("not reached")


def test_a_failed_check_keeps_the_window_open_and_says_why(dao, fake, gmail_settings, caplog):
    with caplog.at_level(logging.WARNING, logger="mailjobs.bounces"):
        assert bounces.check_all(gmail_settings.with_overrides(bounce_check_interval=600), dao,
                                 _Failing()) == {}
    assert any("gmail.readonly" in m and f"mailjobs auth {SENDER}" in m
               for m in caplog.messages)
    (checked,) = sql(dao, "SELECT bounces_checked_at FROM senders WHERE email=%s", (SENDER,))
    assert checked[0] is None       # the next check reads the same window again


def test_the_first_check_looks_back_a_week_and_later_ones_overlap():
    now = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)
    first = bounces.query_since(None, now)
    assert first.endswith(f"after:{int((now - timedelta(days=7)).timestamp())}")
    later = bounces.query_since(now, now + timedelta(minutes=10))
    assert later == ("(from:mailer-daemon OR from:postmaster) "
                     f"after:{int((now - timedelta(minutes=15)).timestamp())}")


# --- complaints (ARF feedback reports) -----------------------------------------------------
FBL = "fbl-reports@mail.example.net"


def _reports(outcome: str) -> float:
    return REGISTRY.get_sample_value("mailjobs_mailbox_reports_total",
                                     {"sender": SENDER, "outcome": outcome}) or 0.0


@pytest.mark.parametrize("name, reporter, recipient", [
    ("arf_abuse.eml", "ExampleNetFBL/2.1", "gone@example.net"),     # whole message returned
    ("arf_redacted.eml", "ExampleOrg-Complaints/1.0", None),        # headers only, no address
])
def test_each_feedback_report_is_a_complaint(name, reporter, recipient):
    complaint = dsn.parse(sample(name))
    assert isinstance(complaint, dsn.Complaint)
    assert (complaint.kind, complaint.error_code, complaint.feedback_type) == \
        ("complaint", "complaint", "abuse")
    assert (complaint.reporter, complaint.recipient) == (reporter, recipient)
    assert complaint.message_id == "<mj.1.2.ab@example.com>"
    assert complaint.error.startswith("complaint (abuse)") and reporter in complaint.error


@pytest.mark.parametrize("feedback_type", ["not-spam", "auth-failure", ""])
def test_reports_that_are_not_complaints_are_ignored(feedback_type):
    raw = sample("arf_abuse.eml").replace(b"Feedback-Type: abuse",
                                          f"Feedback-Type: {feedback_type}".encode())
    assert dsn.parse(raw) is None


def test_feedback_loop_addresses_join_the_search_and_are_checked():
    now = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)
    q = bounces.query_since(now, now, ("fbl@example.net", "arf.example.org"))
    assert q.startswith("(from:mailer-daemon OR from:postmaster OR from:fbl@example.net OR "
                        "from:arf.example.org) after:")
    s = Settings(feedback_loop_from="fbl@example.net, arf.example.org")
    assert s.feedback_loop_addresses == ("fbl@example.net", "arf.example.org")
    for bad in ("x) OR (label:inbox", "a b@", "fbl@example.net;rm", "postmaster"):
        with pytest.raises(ValueError, match="FEEDBACK_LOOP_FROM"):
            Settings(feedback_loop_from=bad)


def test_a_complaint_suppresses_the_address_and_leaves_the_recipient_sent(
        client, key, dao, fake, gmail_settings, caplog):
    rows = _sent_job(client, key, dao, gmail_settings, 3)
    a, b = rows["user0@example.com"], rows["user1@example.com"]
    fake.deliver(SENDER, sample("arf_abuse.eml", a.message_id, a.to_email).replace(
        b"fbl-reports@mail.example.net", FBL.encode()))
    fake.deliver(SENDER, sample("arf_redacted.eml", b.message_id, b.to_email).replace(
        b"complaints@fbl.example.org", FBL.encode()))
    fake.deliver(SENDER, sample("arf_abuse.eml", "<not.ours@example.com>").replace(
        b"fbl-reports@mail.example.net", FBL.encode()))
    # without FEEDBACK_LOOP_FROM the reports are not even listed
    assert _check_now(dao, gmail_settings) == {}
    settings = gmail_settings.with_overrides(feedback_loop_from=FBL)
    before = {o: _reports(o) for o in ("complaint", "unmatched")}
    with caplog.at_level(logging.WARNING, logger="mailjobs.bounces"):
        assert _check_now(dao, settings) == {"complaint": 2, "unmatched": 1}
    assert {o: _reports(o) - before[o] for o in before} == {"complaint": 2, "unmatched": 1}
    after = {x.to_email: x for x in recipients(dao, a.job_id)}
    assert {after[x].status for x in after} == {"sent"}            # delivered, complained after
    assert [(x.error_code, x.error.split(",")[0]) for x in (after[a.to_email], after[b.to_email])] \
        == [("complaint", f"complaint (abuse) from {a.to_email}"), ("complaint", "complaint (abuse)")]
    assert after["user2@example.com"].error_code is None
    listed = sql(dao, "SELECT email, reason, job_id, recipient_id, detail FROM suppressions "
                      "ORDER BY email")
    assert [row[:4] for row in listed] == [(a.to_email, "complaint", a.job_id, a.id),
                                           (b.to_email, "complaint", b.job_id, b.id)]
    assert "ExampleNetFBL/2.1" in listed[0][4] and "ExampleOrg-Complaints/1.0" in listed[1][4]
    assert sorted(o for (o,) in sql(dao, "SELECT outcome FROM bounce_messages")) == \
        ["complaint", "complaint", "unmatched"]
    assert any(f"{a.to_email} complained" in m and "address suppressed" in m
               for m in caplog.messages)
    # a later job of the key skips both addresses
    again = post(client, key, body(3))
    assert (again.json["recipients"], again.json["suppressed"]) == (3, 2)
