"""Verified send-as addresses: which From addresses each sender's Gmail account may use.

Gmail sends a message whose From is not the account's own address or one of its verified
aliases ("Send mail as", users.settings.sendAs) only after rewriting it to the account's
address, or refuses it. So the list is read (users.settings.sendAs.list, scope
gmail.settings.basic) at `mailjobs auth` and then every SEND_AS_CHECK_INTERVAL seconds by one
runner per sender (`Dao.claim_send_as_check`), and kept in `send_as_addresses`: the primary
address and the aliases whose verificationStatus is "accepted" are the verified ones.

A POST is checked against the known lists (`refusal`): its sender_email must be the account
itself or a verified alias; an alias with no credentials of its own is sent with its account's
(`transports.factory.DatabaseCredentials`). Where nothing is known (the list never read: the
outbox transport, a missing scope, a domain key's new address), the POST is accepted as before.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

from mailjobs.dao_mysql import Dao, DaoError
from mailjobs.periodic import GmailRound
from mailjobs.settings import Settings
from mailjobs.transports.base import SendError

log = logging.getLogger("mailjobs.send_as")

SCOPE = "https://www.googleapis.com/auth/gmail.settings.basic"
LISTED = 50          # allowed addresses named in a 400 at most


class SendAsReader(Protocol):
    def send_as_list(self, sender_email: str) -> list[dict[str, Any]]: ...


def verified(entries: list[dict[str, Any]]) -> list[tuple[str, bool, str | None]]:
    """(address, is_primary, verificationStatus) of every entry of a sendAs.list answer."""
    out: list[tuple[str, bool, str | None]] = []
    for entry in entries:
        address = str(entry.get("sendAsEmail") or "").strip().lower()
        if not address or len(address) > 320:
            continue
        status = entry.get("verificationStatus")
        out.append((address, bool(entry.get("isPrimary")),
                    str(status)[:32] if status is not None else None))
    return out


def read(settings: Settings, dao: Dao, reader: SendAsReader, sender: str) -> list[str]:
    """Read and store the sender's list; the verified addresses. Raises SendError when Gmail
    refuses (the failure is stored: `senders.send_as_error`)."""
    try:
        entries = verified(reader.send_as_list(sender))
    except SendError as exc:
        hint = (" (reading it needs the gmail.settings.basic scope: run `mailjobs auth "
                f"{sender}` again)" if exc.status == 403 else "")
        dao.send_as_failed(sender, f"{exc}{hint}", settings.send_as_check_interval or 86400)
        raise
    dao.save_send_as(sender, entries, settings.send_as_check_interval or 86400)
    return [a for a, primary, status in entries if primary or status == "accepted"]


def refusal(dao: Dao, sender: str, may_send_as: Any,
            rows: list[tuple[str, str, str | None, bool, str | None]] | None = None
            ) -> list[str] | None:
    """None when a job may be sent as `sender`; else the addresses that may be used instead
    (those the API key may send as, from the known lists), for the 400. `rows`: the
    sender's Dao.send_as_for rows when read already (in the storing transaction)."""
    sender = sender.lower()
    rows = [(kind, account.lower(), address.lower() if address else address, primary, status)
            for kind, account, address, primary, status in
            (dao.send_as_for(sender) if rows is None else rows)]
    own_list = [r for r in rows if r[0] == "list" and r[1] == sender]
    if own_list:                      # the sender is an account whose list is known
        ok = [r[2] for r in own_list if r[3] or r[4] == "accepted"]
        return None if sender in ok else [a for a in ok if a and may_send_as(a)][:LISTED]
    as_alias = [r for r in rows if r[0] == "list" and r[2] == sender]
    if any(r[3] or r[4] == "accepted" for r in as_alias):
        return None                   # a verified alias of a known account
    if any(r[0] == "own" for r in rows):
        return None                   # credentials of its own, its list not (yet) known
    if not as_alias and not any(r[0] == "known" for r in rows):
        return None                   # nothing known anywhere (outbox, never read): as before
    return [a for a in dao.verified_send_as(1000) if may_send_as(a)][:LISTED]


class SendAsChecker(GmailRound):
    """The runner's daily read of every sender's send-as list: `tick()` from its loop is cheap
    and never blocks; at most once a minute it starts a round in a daemon thread, which reads
    the lists that are due (one runner per sender, the database decides)."""

    name = "send-as-check"

    def interval(self) -> float:
        return float(self.settings.send_as_check_interval)

    def round(self) -> None:
        reader = None
        try:
            for sender in self.dao.credentialed_senders():
                if self.stop.is_set():
                    break
                if not self.dao.claim_send_as_check(sender, self.settings.send_as_check_interval):
                    continue
                if reader is None:
                    reader = self._factory()
                try:
                    allowed = read(self.settings, self.dao, reader, sender)
                    log.info("sender %s may send as: %s", sender, ", ".join(allowed) or "-")
                except SendError as exc:
                    log.warning("sender %s: reading its send-as addresses failed: %s; next try "
                                "in %d s", sender, exc, self.settings.send_as_check_interval)
        except DaoError as exc:
            log.warning("send-as check: database unavailable (%s); next try later", exc)
        except Exception:   # a bug: log it, the runner goes on, the next round tries again
            log.exception("send-as check failed")
        finally:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
