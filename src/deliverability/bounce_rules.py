"""What one mailbox message a bounce check read does: which recipient it counts for, the outcome
recorded with it, how the recipient is marked, and whether the address is suppressed. Pure
decisions: `Dao.record_bounce` looks the recipient up and writes what `decide` says, in one
transaction."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailjobs.deliverability.addresses import address_key
from mailjobs.mail_message import has_own_token

# The suppression reason each kind of report puts on the key's list (other kinds: none).
SUPPRESSES = {"hard": "hard_bounce", "complaint": "complaint"}


@dataclass(frozen=True)
class BounceTarget:
    """The recipient a report's Message-ID names (queries.sql bounce_recipient)."""
    recipient_id: int
    job_id: int
    to_email: str
    api_key_id: int
    message_id: str | None


@dataclass(frozen=True)
class BounceDecision:
    outcome: str                 # stored with the message: hard, soft, complaint, unmatched...
    target: BounceTarget | None  # the recipient it acts on (None: nobody)
    mark: str | None = None      # "complained" (stays sent, annotated) or "bounced"
    event: str | None = None     # the webhook event of a recipient so marked
    suppress: str | None = None  # the suppression reason for its address; None: not suppressed


def looks_up(kind: str | None, message_id: str | None) -> bool:
    """Whether the report's recipient is worth looking up: a bounce or complaint that could be
    read and carries a Message-ID."""
    return bool(kind) and kind != "unreadable" and bool(message_id)


def decide(kind: str | None, target: BounceTarget | None, named: Sequence[str] = (),
           guess: str | None = None) -> BounceDecision:
    """The decision for a report of `kind` (None: not a bounce) whose Message-ID found
    `target`. A hard bounce or a complaint suppresses the address; a complaint leaves the
    recipient `sent` (it was delivered); an unreadable report acts on nobody; a report not
    `attributed` to the recipient is `mismatched`."""
    if not kind:
        return BounceDecision("not_a_bounce", None)
    if kind == "unreadable":
        return BounceDecision("unreadable", None)
    if target is None:
        return BounceDecision("unmatched", None)
    if not attributed(target.message_id, target.to_email, named, guess):
        return BounceDecision("mismatched", None)
    if kind == "complaint":
        return BounceDecision(kind, target, "complained", "recipient.complained",
                              SUPPRESSES[kind])
    return BounceDecision(kind, target, "bounced", "recipient.bounced", SUPPRESSES.get(kind))


def attributed(stored_message_id: str | None, to_email: str, named: Sequence[str],
               guess: str | None) -> bool:
    """Whether a report whose Message-ID is this recipient's own counts for it. A report that
    names its recipients (Final-Recipient, Original-Recipient, Original-Rcpt-To) must name this
    one. A Message-ID of the older per-batch form (guessable by another recipient of the batch)
    counts only when the report names the recipient, in its fields or, for a text bounce, as
    the address it quotes (`guess`)."""
    mine = address_key(to_email)
    if named:
        return any(address_key(a) == mine for a in named)
    if has_own_token(stored_message_id):
        return True
    return guess is not None and address_key(guess) == mine
