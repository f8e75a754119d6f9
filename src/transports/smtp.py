"""Sending through an SMTP relay (MAIL_TRANSPORT=smtp) with smtplib.

One SmtpTransport per sending thread, holding at most one SMTP connection:

- The connection is reused across messages, checked with NOOP before each reuse (re-opened when
  the check fails), and closed and re-opened after SMTP_MAX_MESSAGES_PER_CONNECTION messages.
  A connection idle for IDLE_CLOSE seconds is closed by a background reaper, so an idle runner
  neither keeps the relay's connections nor the shared slots.
- STARTTLS, implicit TLS (SMTP_SECURITY=ssl) or none; login when SMTP_USERNAME is set. Every
  socket operation is bounded by SMTP_TIMEOUT.
- SMTP_MAX_CONNECTIONS is a cap over ALL runners on all hosts, kept in the database
  (`smtp_slots`): a slot is taken before a connection is opened, its lease renewed while the
  connection lives and freed when it closes. N processes each opening M connections is what
  caused "421 Too many concurrent SMTP connections". With no free slot the thread waits up to
  SLOT_WAIT seconds, then the send is not attempted (SendError rate/smtp_busy).

Errors become SendErrors (see transport_base): 421 and other 4xx answers are transient
(smtp_421 / smtp_4xx, retried no sooner than SMTP_TRANSIENT_DELAY; a 421 also drops the
connection); 5xx to RCPT or DATA is permanent (smtp_5xx); a refused login is sender_config
(smtp_auth); a refused connection or DNS failure is transient (connection_error); a timeout or a
disconnect once DATA was started is in doubt (timeout / connection_error).
"""
from __future__ import annotations

import logging
import os
import random
import re
import secrets
import smtplib
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mailjobs.dao_mysql import Dao, DaoError
from mailjobs.settings import Settings
from mailjobs.transports.base import OutgoingMessage, SendError, SendResult
from mailjobs.transports.learned_limits import SMTP, LearnedLimits

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger("mailjobs.transport.smtp")

SLOT_LEASE = 60.0        # seconds a slot is held without renewal (at least 4 x SMTP_TIMEOUT)
SLOT_WAIT = 10.0         # seconds a send waits for a free slot before smtp_busy
SLOT_POLL = (0.2, 0.4)   # seconds between tries while waiting (uniform random)
ROTATE_YIELD = 0.5       # pause after freeing a slot at SMTP_MAX_MESSAGES_PER_CONNECTION, so a
                         # thread waiting for a slot gets it before this one takes it back
BUSY_RETRY = 5.0         # retry_after of smtp_busy
REFUSED_RETRY = (0.5, 1.5)  # retry_after (uniform random) of a connection refused while others
                            # were open: the cap is lowered, so the retry waits for a slot
IDLE_CLOSE = 5.0         # seconds a connection may stay unused before it is closed
WANTED_IDLE_CLOSE = 0.2  # ... while another thread of this process waits for a slot
REFUSAL_SETTLE = 2.0     # seconds a refused connection waits for this process's other
                         # attempts to settle before it counts the established ones
PROVIDER_ID_MAX = 64     # job_recipients.gmail_message_id is VARCHAR(64)
_QUEUE_ID = (re.compile(r"queued as\s+<?([^\s<>]+)", re.I), re.compile(r"\bid=([^\s;,]+)"))
_AUTH_CODES = {530, 534, 535, 538}
_local_hostname: str | None = None


def local_hostname() -> str:
    """The EHLO name, looked up once per process (socket.getfqdn may be slow)."""
    global _local_hostname
    if _local_hostname is None:
        _local_hostname = socket.getfqdn() or "localhost"
    return _local_hostname


class _SMTP(smtplib.SMTP):
    """Remembers whether DATA was started, whether the server took it (354: from then on the
    message may have reached it) and the final reply."""
    data_started = False
    data_open = False
    data_reply: tuple[int, bytes] | None = None

    def data(self, msg: ReadableBuffer | str) -> tuple[int, bytes]:
        self.data_started = True
        reply = super().data(msg)
        self.data_reply = reply
        return reply

    def getreply(self) -> tuple[int, bytes]:
        reply = super().getreply()
        if self.data_started and reply[0] == 354:
            self.data_open = True
        return reply


class _SMTP_SSL(_SMTP, smtplib.SMTP_SSL):
    """The same tracking over TLS from the first byte."""


# -- the shared connection cap -------------------------------------------------------------------
class ConnectionSlots:
    """SMTP_MAX_CONNECTIONS slots in the `smtp_slots` table, shared by every runner; fewer
    while a learned cap for the server is lower (learned_limits.py)."""

    def __init__(self, dao: Dao, size: int, lease: float = SLOT_LEASE,
                 limits: LearnedLimits | None = None, target: str = "") -> None:
        self.dao = dao
        self.configured = size
        self.lease = lease
        self.limits = limits
        self.target = target
        self._waiting = 0           # this process's threads waiting for a slot
        self._waiting_lock = threading.Lock()
        self._connecting = 0        # this process's connections being opened
        self._settle = threading.Condition()

    @property
    def waiting(self) -> int:
        return self._waiting

    def wait_started(self, delta: int) -> None:
        with self._waiting_lock:
            self._waiting += delta

    @property
    def size(self) -> int:
        if self.limits is None:
            return self.configured
        return min(self.configured, self.limits.cap(SMTP, self.target))

    def acquire(self, holder: str) -> int | None:
        size = self.size
        return self.dao.acquire_smtp_slot(holder, size, self.lease,
                                          capped=size < self.configured)

    @contextmanager
    def connecting(self) -> Iterator[None]:
        """Around opening a connection (and marking it established): a refusal's count waits
        for this process's other connection attempts to settle."""
        with self._settle:
            self._connecting += 1
        try:
            yield
        finally:
            with self._settle:
                self._connecting -= 1
                self._settle.notify_all()

    def established_by_others(self, holder: str, before: datetime) -> int:
        """Connections of other holders (any runner) established before `before`."""
        return self.dao.smtp_slots_connected_by_others(holder, before)

    def settled_by_others(self, holder: str, settle: float) -> int:
        """Connections of other holders established now, once this process's other attempts
        have settled (up to `settle` seconds)."""
        with self._settle:
            self._settle.wait_for(lambda: self._connecting == 0, settle)
        return self.dao.smtp_slots_connected_by_others(holder, None)

    def mark_established(self, slot: int, holder: str, when: datetime) -> None:
        self.dao.mark_smtp_slot_connected(slot, holder, when)

    def renew(self, slot: int, holder: str) -> bool:
        return self.dao.renew_smtp_slot(slot, holder, self.lease)

    def release(self, slot: int, holder: str, closed_by_us: bool = False) -> None:
        """Free the slot. `closed_by_us`: its connection was established and closed with QUIT
        (idle, rotated): the server may count it for a moment more, so a refusal in the next
        second counts it (smtp_slots_connected_by_others). A connection that broke is not:
        after a server restart every reconnection is refused, and that is no limit."""
        self.dao.release_smtp_slot(slot, holder, closed_by_us)


def slots_for(settings: Settings, dao: Dao,
              limits: LearnedLimits | None = None) -> ConnectionSlots | None:
    """The shared slots, or None when SMTP_MAX_CONNECTIONS is 0 (no cap, nothing learned)."""
    if settings.smtp_max_connections <= 0:
        return None
    return ConnectionSlots(dao, settings.smtp_max_connections,
                           max(SLOT_LEASE, 4 * settings.smtp_timeout), limits,
                           f"{settings.smtp_host}:{settings.smtp_port}")


# -- closing idle connections --------------------------------------------------------------------
class _IdleReaper:
    """One daemon thread per process that closes connections idle for too long."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._transports: weakref.WeakSet[SmtpTransport] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def add(self, transport: SmtpTransport) -> None:
        with self._lock:
            self._transports.add(transport)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="smtp-idle-reaper",
                                                daemon=True)
                self._thread.start()

    def discard(self, transport: SmtpTransport) -> None:
        with self._lock:
            self._transports.discard(transport)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            with self._lock:
                transports = list(self._transports)
                if not transports:
                    self._thread = None
                    return
            for transport in transports:
                try:
                    transport.close_if_idle()
                except Exception:
                    log.exception("closing an idle SMTP connection failed")


_reaper = _IdleReaper()


# -- classifying errors --------------------------------------------------------------------------
def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())[:500]


def _is_timeout(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return True
        if "timed out" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _network_error(exc: BaseException, what: str, sent_maybe: bool,
                   attempted: bool = True) -> SendError:
    code = "timeout" if _is_timeout(exc) else "connection_error"
    kind = "in_doubt" if sent_maybe else "transient"
    hint = " (may have been sent)" if sent_maybe else ""
    return SendError(kind, code, f"SMTP {what} failed: {type(exc).__name__}: {exc}{hint}",
                     attempted=attempted or sent_maybe)


def provider_id(reply: bytes | str | None, message_id: str) -> str:
    """The relay's queue id from the final DATA reply ("250 2.0.0 Ok: queued as 4F3A2"),
    else the Message-ID; at most PROVIDER_ID_MAX characters."""
    text = _text(reply or "")
    for pattern in _QUEUE_ID:
        match = pattern.search(text)
        if match:
            return match.group(1)[:PROVIDER_ID_MAX]
    return message_id[:PROVIDER_ID_MAX]


# -- the transport -------------------------------------------------------------------------------
class SmtpTransport:
    name = "smtp"

    def __init__(self, settings: Settings, slots: ConnectionSlots | None, *,
                 slot_wait: float | None = None, idle_close: float | None = None) -> None:
        if not settings.smtp_host:
            raise ValueError("MAIL_TRANSPORT=smtp needs SMTP_HOST")
        self.settings = settings
        self.slots = slots
        self.slot_wait = SLOT_WAIT if slot_wait is None else slot_wait
        self.idle_close = IDLE_CLOSE if idle_close is None else idle_close
        self.holder = f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._conn: _SMTP | None = None
        self._slot: int | None = None
        self._slot_renewed = 0.0
        self._on_conn = 0          # messages sent (tried) over the current connection
        self._last_used = time.monotonic()
        _reaper.add(self)

    @property
    def where(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.smtp_port}"

    # -- public --------------------------------------------------------------------------------
    def send(self, msg: OutgoingMessage) -> SendResult:
        with self._lock:
            try:
                return self._send(msg)
            finally:
                self._last_used = time.monotonic()

    def find_by_message_id(self, sender_email: str, message_id: str) -> str | None:
        raise SendError("transient", "unsupported",
                        "SMTP cannot look up a message that was already handed over; "
                        f"{message_id} cannot be checked")

    def close(self) -> None:
        _reaper.discard(self)
        with self._lock:
            self._drop(quit=True)

    def close_if_idle(self) -> None:
        """Called by the reaper thread: close a connection unused for `idle_close` seconds."""
        if not self._lock.acquire(blocking=False):
            return          # in use right now
        try:
            idle_close = self.idle_close
            if self.slots is not None and self.slots.waiting:   # another thread wants a slot
                idle_close = min(idle_close, WANTED_IDLE_CLOSE)
            if self._conn is not None and time.monotonic() - self._last_used >= idle_close:
                log.debug("closing the SMTP connection to %s (idle)", self.where)
                self._drop(quit=True)
        finally:
            self._lock.release()

    # -- sending -------------------------------------------------------------------------------
    def _send(self, msg: OutgoingMessage) -> SendResult:
        conn = self._connection()
        self._on_conn += 1
        conn.data_started, conn.data_open, conn.data_reply = False, False, None
        try:
            conn.sendmail(msg.sender_email, [msg.to_email], msg.raw)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()), (-1, b""))
            raise self._answer(code, text, f"RCPT TO:<{msg.to_email}>", "permanent",
                               attempted=False) from exc
        except smtplib.SMTPSenderRefused as exc:
            # 552 at MAIL FROM: this message is over the relay's size limit
            five = "permanent" if exc.smtp_code == 552 else "sender_config"
            raise self._answer(exc.smtp_code, exc.smtp_error, f"MAIL FROM:<{msg.sender_email}>",
                               five, attempted=False) from exc
        except smtplib.SMTPDataError as exc:   # to DATA itself (not taken) or to the message
            raise self._answer(exc.smtp_code, exc.smtp_error, "DATA", "permanent",
                               attempted=conn.data_open) from exc
        except smtplib.SMTPResponseException as exc:
            raise self._answer(exc.smtp_code, exc.smtp_error, "the SMTP session",
                               "sender_config", attempted=conn.data_open) from exc
        except UnicodeEncodeError as exc:   # an address smtplib cannot write (needs SMTPUTF8)
            self._drop(quit=False)
            raise SendError("permanent", "invalid_address",
                            f"address cannot be sent over SMTP without SMTPUTF8: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:   # disconnected, timed out, reset
            sent_maybe = conn.data_started
            self._drop(quit=False)
            raise _network_error(exc, f"send to {msg.to_email} via {self.where}",
                                 sent_maybe, attempted=conn.data_open) from exc
        code, reply = conn.data_reply or (250, b"")
        if self.slots is not None and self.slots.limits is not None:
            self.slots.limits.succeeded(SMTP, self.where)
        return SendResult(provider_id=provider_id(reply, msg.message_id))

    def _answer(self, code: int, text: bytes | str, what: str, five: str,
                attempted: bool = True) -> SendError:
        """The SendError for an SMTP error reply; `five` is the kind of a 5xx. A 4xx before
        the server took the message (`attempted` False) is not an attempt: the recipient is
        deferred (MAX_DEFER), not failed after MAX_ATTEMPTS."""
        detail = f"SMTP {code} {_text(text)} (answer to {what} from {self.where})"
        delay = self.settings.smtp_transient_delay
        if code == 421:
            self._drop(quit=False)   # the server is closing this connection
            return SendError("transient", "smtp_421", f"{detail}; connection dropped, retrying "
                             "later", retry_after=delay, status=code, attempted=attempted)
        if 400 <= code < 500:
            return SendError("transient", "smtp_4xx", detail, retry_after=delay, status=code,
                             attempted=attempted)
        if code in _AUTH_CODES:
            return SendError("sender_config", "smtp_auth", f"{detail}; check SMTP_USERNAME and "
                             "SMTP_PASSWORD, then resume the sender", status=code)
        if 500 <= code < 600:
            hint = "" if five == "permanent" else "; fix the relay or sender, then resume it"
            return SendError(five, "smtp_5xx", f"{detail}{hint}", status=code)
        self._drop(quit=False)
        return SendError("transient", "smtp_error", f"unexpected {detail}", status=code)

    # -- the connection ------------------------------------------------------------------------
    def _connection(self) -> _SMTP:
        yield_first = False
        limit = self.settings.smtp_max_messages_per_connection   # 0: no limit
        if self._conn is not None and 0 < limit <= self._on_conn:
            self._drop(quit=True)
            yield_first = True
        if self._conn is not None and self._keep_slot() and self._noop_ok():
            return self._conn
        if self._slot is None and self.slots is not None:
            self._slot = self._acquire(yield_first)
            self._slot_renewed = time.monotonic()
        started = datetime.now(UTC)
        try:
            try:
                with self.slots.connecting() if self.slots is not None else nullcontext():
                    self._conn = self._open()
                    self._established()
            except SendError as exc:
                if exc.refusal is not None:
                    raise self._refused(exc.refusal, exc, started) from exc
                raise
        except BaseException:
            self._drop(quit=False)
            raise
        self._on_conn = 0
        return self._conn

    def _established(self) -> None:
        """Marks the slot's connection established, for other runners' refusal counts."""
        if self.slots is not None and self._slot is not None:
            try:
                self.slots.mark_established(self._slot, self.holder,
                                            datetime.now(UTC))
            except DaoError as exc:   # only a refusal's count is less exact
                log.warning("could not mark SMTP slot %d connected (%s)", self._slot, exc)

    def _keep_slot(self) -> bool:
        """Renew the slot's lease when a third of it is gone; False (connection closed) when the
        slot is lost to another holder, or cannot be renewed and is close to expiring."""
        if self.slots is None or self._slot is None:
            return True
        age = time.monotonic() - self._slot_renewed
        if age < self.slots.lease / 3:
            return True
        try:
            if self.slots.renew(self._slot, self.holder):
                self._slot_renewed = time.monotonic()
                return True
            log.warning("SMTP slot %d of %s expired and was taken by another runner; "
                        "reconnecting under a new slot", self._slot, self.holder)
            self._slot = None
        except DaoError as exc:
            if age < 2 * self.slots.lease / 3:
                log.warning("could not renew SMTP slot %d (%s); keeping it for now", self._slot,
                            exc)
                return True
            log.warning("could not renew SMTP slot %d (%s); closing its connection",
                        self._slot, exc)
        self._drop(quit=True)
        return False

    def _noop_ok(self) -> bool:
        assert self._conn is not None
        try:
            code: int | None
            text: bytes | str
            code, text = self._conn.noop()
        except (smtplib.SMTPException, OSError) as exc:
            code, text = None, f"{type(exc).__name__}: {exc}"
        if code == 250:
            return True
        log.info("SMTP connection to %s failed its NOOP check (%s %s); reconnecting", self.where,
                 code, _text(text))
        self._close_conn(quit=False)   # the slot is kept for the new connection
        return False

    def _acquire(self, yield_first: bool) -> int:
        assert self.slots is not None
        self.slots.wait_started(+1)
        try:
            return self._wait_for_slot(yield_first)
        finally:
            self.slots.wait_started(-1)

    def _wait_for_slot(self, yield_first: bool) -> int:
        assert self.slots is not None
        deadline = time.monotonic() + self.slot_wait
        if yield_first:
            time.sleep(ROTATE_YIELD)
        while True:
            try:
                slot = self.slots.acquire(self.holder)
            except DaoError as exc:
                raise SendError("rate", "smtp_busy", f"could not take an SMTP connection slot "
                                f"(database: {exc}); not sent, retrying",
                                retry_after=BUSY_RETRY, attempted=False) from exc
            if slot is not None:
                return slot
            pause = random.uniform(*SLOT_POLL)
            if time.monotonic() + pause > deadline:
                raise SendError("rate", "smtp_busy", f"all {self.slots.size} SMTP connections "
                                f"(SMTP_MAX_CONNECTIONS) are in use by other runners; not sent, "
                                "retrying", retry_after=BUSY_RETRY, attempted=False)
            time.sleep(pause)

    def _open(self) -> _SMTP:
        s = self.settings
        timeout = s.smtp_timeout
        conn: _SMTP | None = None
        try:
            if s.smtp_security == "ssl":
                conn = _SMTP_SSL(s.smtp_host, s.smtp_port, local_hostname=local_hostname(),
                                 timeout=timeout, context=ssl.create_default_context())
            else:
                conn = _SMTP(s.smtp_host, s.smtp_port, local_hostname=local_hostname(),
                             timeout=timeout)
            conn.ehlo_or_helo_if_needed()
            if s.smtp_security == "starttls":
                if not conn.has_extn("starttls"):
                    raise SendError("sender_config", "smtp_tls", f"{self.where} does not offer "
                                    "STARTTLS; set SMTP_SECURITY (ssl or none) to match it")
                conn.starttls(context=ssl.create_default_context())
                conn.ehlo()
            if s.smtp_username:
                conn.login(s.smtp_username, s.smtp_password)
            return conn
        except BaseException as exc:
            if conn is not None:
                conn.close()
            error = self._connect_error(exc)
            if error is None:
                raise
            raise error from exc

    def _connect_error(self, exc: BaseException) -> SendError | None:
        """The SendError for a failure while connecting; None to re-raise `exc` as it is."""
        if isinstance(exc, SendError):
            return None
        where = self.where
        if isinstance(exc, smtplib.SMTPAuthenticationError) and not 400 <= exc.smtp_code < 500:
            return SendError("sender_config", "smtp_auth", f"SMTP login as "
                             f"{self.settings.smtp_username} refused by {where}: {exc.smtp_code} "
                             f"{_text(exc.smtp_error)}; fix SMTP_USERNAME/SMTP_PASSWORD, then "
                             "resume the sender", status=exc.smtp_code)
        if isinstance(exc, smtplib.SMTPNotSupportedError):   # no AUTH offered
            return SendError("sender_config", "smtp_auth", f"{where} cannot log in "
                             f"SMTP_USERNAME ({exc}); use SMTP_SECURITY=starttls/ssl or unset it")
        if isinstance(exc, smtplib.SMTPResponseException):   # greeting, EHLO, STARTTLS answers
            if 400 <= exc.smtp_code < 500:
                error = self._answer(exc.smtp_code, exc.smtp_error, "connecting",
                                     "sender_config", attempted=False)
                error.refusal = f"{exc.smtp_code} {_text(exc.smtp_error)}"
                return error
            return self._answer(exc.smtp_code, exc.smtp_error, "connecting", "sender_config")
        if isinstance(exc, ssl.SSLError):
            return SendError("sender_config", "smtp_tls", f"TLS with {where} failed: {exc}; "
                             "check SMTP_SECURITY, SMTP_PORT and the server's certificate")
        if isinstance(exc, (ConnectionRefusedError, smtplib.SMTPServerDisconnected)):
            error = _network_error(exc, f"connection to {where}", False, False)
            error.refusal = f"{type(exc).__name__}: {exc}"
            return error
        if isinstance(exc, (smtplib.SMTPException, OSError)):
            return _network_error(exc, f"connection to {where}", False, False)
        return None

    def _refused(self, reason: str, error: SendError, started: datetime) -> SendError:
        """The server refused a new connection. It is the server's connection limit only when
        connections (of any runner) were already established when this attempt began: the
        server was accepting, so this is not an outage. The shared cap is then lowered to the
        number established once this process's other attempts have settled (at least those
        before; a connection marked established a moment late still counts; one too many is
        corrected by the next refusal, one too few would stay for LEARNED_CAP_HOLD). When others
        became established only while this one was being refused (a burst of attempts at once,
        or the server coming back from an outage) nothing is learned, and the recipient is
        retried soon: its next attempt, after theirs, tells. With none established at all it is
        not a limit (the server is down or refuses this client): the usual delay."""
        slots = self.slots
        if slots is None or slots.limits is None:
            return error
        try:
            before = slots.established_by_others(self.holder, started)
            now = slots.settled_by_others(self.holder, REFUSAL_SETTLE)
        except DaoError as exc:
            log.warning("could not count the open SMTP connections (%s)", exc)
            return error
        if max(before, now) < 1:
            return error
        if before >= 1:
            open_ = max(before, now)
            cap = slots.limits.refused(SMTP, self.where, open_, reason)
            said = f"{open_} other connection(s) were open, cap now {cap}"
        else:
            said = f"{now} other connection(s) opened meanwhile"
        return SendError(error.kind, error.error_code, f"{error.message}; {said}; not sent, "
                         "retrying", retry_after=random.uniform(*REFUSED_RETRY),
                         status=error.status, attempted=False)

    def _close_conn(self, quit: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if quit and conn.sock is not None:
                conn.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            conn.close()

    def _drop(self, quit: bool) -> None:
        """Close the connection, then free its slot."""
        self._close_conn(quit)
        slot, self._slot = self._slot, None
        if slot is not None and self.slots is not None:
            try:
                self.slots.release(slot, self.holder, closed_by_us=quit)
            except DaoError as exc:
                log.warning("could not free SMTP slot %d (%s); it expires with its lease",
                            slot, exc)
