"""Choosing the transport (MAIL_TRANSPORT) and building one per sending thread."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailjobs.dao_mysql import Dao
from mailjobs.settings import PROJECT_ROOT, Settings
from mailjobs.transports.base import SendError, Transport
from mailjobs.transports.credentials import CredentialsMissing, CredentialStore
from mailjobs.transports.learned_limits import LearnedLimits, SenderGate

log = logging.getLogger("mailjobs.transport")
TRANSPORTS = ("gmail", "smtp", "outbox", "null")


class DatabaseCredentials:
    """The credentials provider the Gmail transport asks for each sender's OAuth token."""

    def __init__(self, store: CredentialStore, token_uri: str | None) -> None:
        self.store = store
        self.token_uri = token_uri or None
        self._accounts: dict[str, str] = {}   # a verified alias -> the account sending it

    def get(self, sender_email: str) -> Any:
        """The sender's credentials (`own`); for an address with none of its own that is a
        verified send-as alias of an account (send_as.py), that account's: Gmail sends
        as the alias from the account."""
        try:
            return self.own(sender_email)
        except SendError as exc:
            if exc.error_code != "auth_missing":
                raise
            account = self.store.dao.send_as_account(sender_email.lower())
            if account is None:
                raise
        self._accounts[sender_email] = account
        return self.own(account)

    def own(self, sender_email: str) -> Any:
        """A service-account key delegated for the address or its domain first (issue 18),
        else the sender's own OAuth grant."""
        from mailjobs.transports.gmail import credentials_from_info, delegated_credentials

        try:
            delegated = self.store.load_delegated(sender_email)
            if delegated is not None:
                return delegated_credentials(delegated, sender_email, self.token_uri)
            info = self.store.load_info(sender_email)
        except CredentialsMissing as exc:
            raise SendError("sender_auth", "auth_missing", str(exc)) from None
        return credentials_from_info(info, self.token_uri)

    def save(self, sender_email: str, creds: Any) -> None:
        from mailjobs.transports.gmail import credentials_to_info, is_delegated

        if is_delegated(creds):   # minted from the key whenever needed: nothing to keep
            return
        self.store.store_info(self._accounts.get(sender_email, sender_email),
                              credentials_to_info(creds))


def outbox_path(settings: Settings) -> Path:
    path = Path(settings.outbox_dir)
    return path if path.is_absolute() else PROJECT_ROOT / path


class Factory:
    """Makes a new transport (the runner calls it once per sending thread). `limits` are the
    process's learned caps of the far side, which the runner refreshes and flushes."""

    def __init__(self, make: Callable[[], Transport],
                 limits: LearnedLimits | None = None) -> None:
        self.make = make
        self.limits = limits

    def __call__(self) -> Transport:
        return self.make()


def transport_factory(settings: Settings, dao: Dao) -> Callable[[], Transport]:
    """A function that makes a new transport; the runner calls it once per sending thread."""
    name = settings.transport_name
    if name == "outbox":
        from mailjobs.transports.outbox import OutboxTransport

        directory = outbox_path(settings)
        return lambda: OutboxTransport(directory)
    if name == "null":
        from mailjobs.transports.null import NullTransport

        return NullTransport
    if name == "gmail":
        from mailjobs.transports.gmail import GmailTransport

        provider = DatabaseCredentials(CredentialStore(settings, dao), settings.gmail_token_uri)
        limits = LearnedLimits(settings, dao)
        gate = SenderGate(limits)   # concurrent sends per sender, over this process's threads
        return Factory(lambda: GmailTransport(
            provider, api_endpoint=settings.gmail_api_endpoint or None,
            timeout=settings.gmail_timeout, gate=gate), limits)
    if name == "smtp":
        from mailjobs.transports.smtp import SmtpTransport, slots_for

        if not settings.smtp_host:
            raise ValueError("MAIL_TRANSPORT=smtp needs SMTP_HOST")
        limits = LearnedLimits(settings, dao)
        # SMTP_MAX_CONNECTIONS or the learned cap, shared through the database
        slots = slots_for(settings, dao, limits)
        return Factory(lambda: SmtpTransport(settings, slots), limits)
    raise ValueError(f"MAIL_TRANSPORT must be one of {', '.join(TRANSPORTS)}, got {name!r}")


def announce(settings: Settings) -> None:
    """Say loudly when mail is not really being sent."""
    if settings.transport_name == "outbox":
        log.warning("MAIL_TRANSPORT is outbox: NO MAIL IS SENT. Messages are written as .eml "
                    "files under %s. Configure Gmail (see README) to send for real.",
                    outbox_path(settings))
    elif settings.transport_name == "null":
        log.warning("MAIL_TRANSPORT is null: messages are discarded (benchmarks only)")
