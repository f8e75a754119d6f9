"""Bounce and complaint detection: read the delivery status notifications (and the feedback-loop
complaint reports) that come back to each Gmail sender's mailbox, and act on the recipients they
are about.

Every BOUNCE_CHECK_INTERVAL seconds (0: never) a runner using the Gmail transport starts a
check in a background thread, so its loop never waits for Gmail. For each sender with stored
credentials (its own OAuth grant, or a delegated service-account key of its address or domain), one runner at a time (`Dao.claim_bounce_check` moves the sender's next-due time
forward; whoever moves it does the check):

1. `users.messages.list(q="(from:mailer-daemon OR from:postmaster) after:<epoch>")`, where the
   epoch is the sender's `bounces_checked_at` minus OVERLAP (Gmail's search index lags behind
   delivery by a little), or LOOKBACK ago on the first check; each FEEDBACK_LOOP_FROM address
   adds an `OR from:<address>`, so feedback loops' ARF complaint reports are read too;
2. the ids already in `bounce_messages` are skipped; each new one is fetched
   (`messages.get(format="raw")`) and parsed (dsn.py);
3. `Dao.record_bounce`, one transaction per message: the recipient whose stored Message-ID the
   DSN names becomes `bounced` (error_code `bounce_5xx` or `bounce_4xx`, the status and
   diagnostic as `error`); a hard bounce (5.x.x) also puts the address on the job's key's
   suppression list (reason `hard_bounce`). A soft bounce (4.x.x) is recorded, not suppressed.
   A complaint leaves the recipient `sent` and suppresses the address (reason `complaint`).
   The message id goes into `bounce_messages` in the same transaction, so nothing is processed
   twice, even by two runners at once;
4. when every message was handled, `bounces_checked_at` moves to the time the check started. A
   check that fails half-way (Gmail down, no gmail.readonly scope) leaves it, so the next check
   reads the same window again.

Nothing a stranger mails can stop or mislead this: a message is read up to
MAILBOX_MAX_MESSAGE_BYTES, dsn.parse never raises (an unreadable message is recorded as
`unreadable`, logged and counted), a report counts only for the recipient whose own Message-ID
token it carries and whose address it names (`Dao.record_bounce`), and an unexpected error with
one message or one sender is logged and the check goes on with the next.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from mailjobs import defaults, metrics
from mailjobs.dao_mysql import Dao, DaoError
from mailjobs.deliverability import dsn
from mailjobs.periodic import GmailRound
from mailjobs.settings import Settings
from mailjobs.transports.base import SendError

log = logging.getLogger("mailjobs.bounces")

QUERY = "({senders}) after:{after}"
BOUNCE_FROM = ("mailer-daemon", "postmaster")
LOOKBACK = timedelta(days=7)        # how far back the first check of a sender reads
OVERLAP = timedelta(minutes=15)     # re-read this much before the last check (index lag)
LIST_LIMIT = 20000                  # message ids listed per sender and check
FETCH_LIMIT = 1000                  # messages read per sender and check; the rest: next check


class Mailbox(Protocol):
    def list_message_ids(self, sender_email: str, query: str, limit: int = ...) -> list[str]: ...

    def get_raw(self, sender_email: str, gmail_id: str) -> bytes: ...


def query_since(checked_until: datetime | None, now: datetime,
                feedback_from: Sequence[str] = ()) -> str:
    since = (checked_until - OVERLAP) if checked_until is not None else now - LOOKBACK
    senders = " OR ".join(f"from:{s}" for s in (*BOUNCE_FROM, *feedback_from))
    return QUERY.format(senders=senders, after=int(since.timestamp()))


def check_sender(dao: Dao, mailbox: Mailbox, sender: str, checked_until: datetime | None,
                 stop: threading.Event | None = None,
                 feedback_from: Sequence[str] = (),
                 max_bytes: int = defaults.MAILBOX_MAX_MESSAGE_BYTES) -> dict[str, int]:
    """Read the sender's new DSNs and complaint reports; returns counts by outcome. Raises
    SendError when Gmail fails (nothing is lost: the window is read again next time)."""
    started = datetime.now(UTC)
    query = query_since(checked_until, started, feedback_from)
    ids = mailbox.list_message_ids(sender, query, LIST_LIMIT)
    known = dao.known_bounce_messages(sender, ids) if ids else set()
    new = [i for i in ids if i not in known]
    counts: dict[str, int] = {}
    for gmail_id in new[:FETCH_LIMIT]:
        if stop is not None and stop.is_set():
            return counts                  # not finished: the window stays open
        raw = mailbox.get_raw(sender, gmail_id)       # SendError: Gmail failed, read again
        outcome = _handle(dao, sender, gmail_id, raw, max_bytes)
        if outcome is not None:
            counts[outcome] = counts.get(outcome, 0) + 1
            metrics.MAILBOX_REPORTS.labels(metrics.sender_label(sender), outcome).inc()
    if len(new) <= FETCH_LIMIT and len(ids) < LIST_LIMIT:   # all read: close the window
        dao.set_bounces_checked(sender, started)
    return counts


def _handle(dao: Dao, sender: str, gmail_id: str, raw: bytes, max_bytes: int) -> str | None:
    """Parse and record one mailbox message; its outcome, or None when another runner recorded
    it first. Nothing in the message can stop the check: dsn.parse never raises, and a failure
    to record it (other than the database being down) is logged, counted `failed` and skipped."""
    report = dsn.parse(raw, max_bytes)
    if isinstance(report, dsn.Unreadable):
        log.warning("sender %s: mailbox message %s (%d bytes) is unreadable, skipped: %s",
                    sender, gmail_id, len(raw), report.reason)
    try:
        result = dao.record_bounce(
            sender, gmail_id, report.message_id if report else None,
            report.kind if report else None, getattr(report, "error_code", None),
            getattr(report, "error", None), report.named if report else (),
            getattr(report, "recipient", None))
    except DaoError:
        raise                              # the database is down: the round stops
    except Exception:   # a bug or a value the database refused: this message only
        log.exception("sender %s: mailbox message %s could not be recorded; skipped", sender,
                      gmail_id)
        return "failed"
    if result is None:
        return None                        # another runner recorded it a moment ago
    if not isinstance(report, dsn.Unreadable):
        _log(sender, gmail_id, report, result)
    outcome: str = result["outcome"]
    return outcome


def _log(sender: str, gmail_id: str, bounce: dsn.Bounce | dsn.Complaint | None,
         result: dict[str, Any]) -> None:
    if bounce is None:
        log.debug("sender %s: mailbox message %s is not a bounce", sender, gmail_id)
    elif result["outcome"] == "mismatched":
        log.warning("sender %s: %s %s (%s) names Message-ID %s but not its recipient (it names "
                    "%s): not counted", sender,
                    bounce.kind if bounce.kind == "complaint" else "bounce", gmail_id,
                    bounce.status, bounce.message_id, ", ".join(bounce.named)[:300])
    elif result["recipient_id"] is None:
        log.info("sender %s: %s %s (%s) matches no recipient (Message-ID %s)", sender,
                 bounce.kind if bounce.kind == "complaint" else "bounce", gmail_id,
                 bounce.status, bounce.message_id)
    elif bounce.kind == "complaint":
        log.warning("job=%d recipient=%d %s complained: %s%s", result["job_id"],
                    result["recipient_id"], result["email"], bounce.error,
                    "; address suppressed" if result["suppressed"] else "")
    else:
        log.warning("job=%d recipient=%d %s bounced: %s%s", result["job_id"],
                    result["recipient_id"], result["email"], bounce.error,
                    "; address suppressed" if result["suppressed"] else "")


def check_all(settings: Settings, dao: Dao, mailbox: Mailbox,
              stop: threading.Event | None = None) -> dict[str, int]:
    """One round over every sender whose check is due; returns counts by outcome."""
    totals: dict[str, int] = {}
    for sender in dao.bounce_senders():
        if stop is not None and stop.is_set():
            break
        due, checked_until = dao.claim_bounce_check(sender, settings.bounce_check_interval)
        if not due:
            continue
        try:
            counts = check_sender(dao, mailbox, sender, checked_until, stop,
                                  settings.feedback_loop_addresses,
                                  settings.mailbox_max_message_bytes)
        except SendError as exc:
            hint = (" (reading the mailbox needs the gmail.readonly scope: run `mailjobs auth "
                    f"{sender}`)" if exc.status == 403 else "")
            log.warning("sender %s: bounce check failed: %s%s; next try in %d s", sender, exc,
                        hint, settings.bounce_check_interval)
            continue
        except DaoError:
            raise                          # the database is down: no sender can be checked
        except Exception:   # a bug with this sender's mailbox: the other senders go on
            log.exception("sender %s: bounce check failed; next try in %d s", sender,
                          settings.bounce_check_interval)
            continue
        for outcome, n in counts.items():
            totals[outcome] = totals.get(outcome, 0) + n
    return totals


class BounceChecker(GmailRound):
    """The runner's periodic bounce check: `tick()` from its loop is cheap and never blocks;
    when BOUNCE_CHECK_INTERVAL has passed it starts one round in a daemon thread."""

    name = "bounce-check"

    def interval(self) -> float:
        return float(self.settings.bounce_check_interval)

    def round(self) -> None:
        mailbox = None
        try:
            mailbox = self._factory()
            totals = check_all(self.settings, self.dao, mailbox, self.stop)
            if totals:
                log.info("bounce check: %s", ", ".join(f"{k}={v}" for k, v in
                                                      sorted(totals.items())))
        except DaoError as exc:
            log.warning("bounce check: database unavailable (%s); next try later", exc)
        except Exception:   # a bug: log it, the runner goes on, the next round tries again
            log.exception("bounce check failed")
        finally:
            close = getattr(mailbox, "close", None)
            if close is not None:
                close()
