"""What a read bounce or complaint does (deliverability.bounce_rules), decided without a
database: the outcome recorded, the recipient acted on, its mark, and the suppression."""
from __future__ import annotations

from mailjobs.deliverability.bounce_rules import BounceTarget, decide, looks_up
from mailjobs.mail_message import recipient_message_id

OWN_ID = recipient_message_id(7, 42, "sender@example.com")
TARGET = BounceTarget(recipient_id=42, job_id=7, to_email="Ann@Example.com", api_key_id=3,
                      message_id=OWN_ID)


def test_a_hard_bounce_marks_the_recipient_bounced_and_suppresses_the_address():
    d = decide("hard", TARGET)
    assert (d.outcome, d.target, d.mark, d.event, d.suppress) == (
        "hard", TARGET, "bounced", "recipient.bounced", "hard_bounce")


def test_a_soft_bounce_marks_the_recipient_but_suppresses_nobody():
    d = decide("soft", TARGET)
    assert (d.outcome, d.mark, d.suppress) == ("soft", "bounced", None)


def test_a_complaint_leaves_the_recipient_sent_and_suppresses_the_address():
    d = decide("complaint", TARGET)
    assert (d.outcome, d.mark, d.event, d.suppress) == (
        "complaint", "complained", "recipient.complained", "complaint")


def test_a_message_that_is_not_a_bounce_or_unreadable_acts_on_nobody():
    assert (decide(None, TARGET).outcome, decide(None, TARGET).target) == ("not_a_bounce", None)
    assert decide("unreadable", TARGET).outcome == "unreadable"
    assert decide("unreadable", TARGET).target is None
    assert not looks_up("unreadable", OWN_ID) and not looks_up(None, OWN_ID)
    assert not looks_up("hard", None) and looks_up("hard", OWN_ID)


def test_a_bounce_whose_message_id_matches_no_recipient_is_unmatched():
    d = decide("hard", None)
    assert (d.outcome, d.target, d.suppress) == ("unmatched", None, None)


def test_a_report_naming_other_recipients_is_mismatched_and_suppresses_nobody():
    d = decide("hard", TARGET, named=["bob@example.com"])
    assert (d.outcome, d.target, d.suppress) == ("mismatched", None, None)
    assert decide("hard", TARGET, named=["ann@example.com"]).outcome == "hard"


def test_an_older_per_batch_message_id_counts_only_when_the_report_names_the_recipient():
    batch = BounceTarget(42, 7, "ann@example.com", 3, "<1732380000.3f2a@example.com>")
    assert decide("hard", batch).outcome == "mismatched"
    assert decide("hard", batch, guess="ANN@example.com").outcome == "hard"
    assert decide("hard", batch, named=["ann@example.com"]).suppress == "hard_bounce"
