"""The SMTP transport against a real SMTP server (aiosmtpd on 127.0.0.1, a free port) and the
real MariaDB: messages arrive intact, connections are reused, checked and reopened, SMTP answers
become the right recipient outcomes, and SMTP_MAX_CONNECTIONS holds over several runners."""
from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import logging
import socket
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult

from mailjobs.email_scheduler import EmailScheduler
from mailjobs.transports import factory as transports
from mailjobs.transports import smtp as transport_smtp
from mailjobs.transports.base import OutgoingMessage, SendError
from mailjobs.transports.smtp import ConnectionSlots, SmtpTransport
from runner_helpers import fast, recipients, running, wait_for, wait_job_done
from test_api_enqueue import body, post

SENDER = "ops@example.com"


# -- a real SMTP server that records, misbehaves on demand and counts connections --------------
class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.rcpt_answers: dict[str, list[str]] = {}   # address -> answers to give, in order
        self.noop_answers: list[str] = []
        self.data_delays: list[float] = []
        self.ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.open: set[SMTP] = set()
            self.connections = 0
            self.max_open = 0

    # connection accounting (called by CountingSMTP)
    def opened(self, server: SMTP) -> None:
        with self.lock:
            self.open.add(server)
            self.connections += 1
            self.max_open = max(self.max_open, len(self.open))

    def closed(self, server: SMTP) -> None:
        with self.lock:
            self.open.discard(server)

    def drop_all(self) -> None:
        """The server closes every connection (as after its idle timeout)."""
        with self.lock:
            servers = list(self.open)
        for server in servers:
            server.loop.call_soon_threadsafe(server.transport.close)

    def received(self, to: str) -> list[bytes]:
        with self.lock:
            return [raw for _, tos, raw in self.messages if to in tos]

    # aiosmtpd hooks
    async def handle_QUIT(self, server, session, envelope):
        # The session ends at QUIT: count it closed now. Its connection_lost comes later, from
        # the event loop's callbacks, and under load it can run after the client's next
        # connection was accepted, so a client that never had two open looked like one
        # (max_open 2 in test_connections_are_reopened_after_max_messages_per_connection).
        self.closed(server)
        return "221 Bye"

    async def handle_NOOP(self, server, session, envelope, arg):
        with self.lock:
            answer = self.noop_answers.pop(0) if self.noop_answers else None
        if answer is None:
            return "250 OK"
        server.loop.call_soon(server.transport.close)
        return answer

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            answers = self.rcpt_answers.get(address)
            answer = answers.pop(0) if answers else None
        if answer is not None:
            if answer.startswith("421"):
                server.loop.call_soon(server.transport.close)
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:   # accepted (queued) before the answer, which may be slow
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                  envelope.original_content))
            n = next(self.ids)
            delay = self.data_delays.pop(0) if self.data_delays else 0.0
        if delay:
            await asyncio.sleep(delay)
        return f"250 2.0.0 Ok: queued as Q{n}"


class CountingSMTP(SMTP):
    def connection_made(self, transport):
        super().connection_made(transport)
        self.event_handler.opened(self)

    def connection_lost(self, error):
        self.event_handler.closed(self)
        super().connection_lost(error)


class CountingController(Controller):
    def factory(self):
        return CountingSMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self):
        self.port = self.server.sockets[0].getsockname()[1]   # bound to port 0
        super()._trigger_server()


@pytest.fixture()
def start_server():
    controllers = []

    def start(**smtp_kwargs) -> tuple[Recorder, int]:
        handler = Recorder()
        controller = CountingController(handler, hostname="127.0.0.1", port=0, **smtp_kwargs)
        controller.start()
        controllers.append(controller)
        wait_for(lambda: not handler.open, 5, message="the start-up probe to close")
        handler.reset()
        return handler, controller.port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture()
def server(start_server):
    return start_server()


@pytest.fixture()
def smtp(server):
    return server[0]


@pytest.fixture()
def smtp_settings(dao, server):
    return fast(dao.settings, mail_transport="smtp", smtp_host="127.0.0.1", smtp_port=server[1],
                smtp_security="none", smtp_timeout=3.0, smtp_transient_delay=1.0,
                smtp_max_connections=4, sender_rate_per_minute=0, runner_concurrency=1)


@pytest.fixture(autouse=True)
def quick_rotation(monkeypatch):
    monkeypatch.setattr(transport_smtp, "ROTATE_YIELD", 0.05)


def message(n: int, to: str | None = None) -> OutgoingMessage:
    to = to or f"user{n}@example.com"
    raw = (f"From: {SENDER}\r\nTo: {to}\r\nSubject: m{n}\r\nMessage-ID: <m{n}@example.com>\r\n"
           f"\r\nbody {n}\r\n.a line starting with a dot\r\n").encode()
    return OutgoingMessage(1, n, SENDER, to, f"<m{n}@example.com>", raw)


def slot_holders(dao) -> list:
    return [holder for _, holder, _ in dao.smtp_slots()]


# -- through the runner ---------------------------------------------------------------------------
def test_a_job_is_sent_end_to_end_intact_over_one_reused_connection(client, key, dao, smtp,
                                                                     smtp_settings):
    sent_raw: dict[int, bytes] = {}
    base = transports.transport_factory(smtp_settings, dao)

    class Recording:   # remembers what the runner handed to the transport, byte for byte
        def __init__(self):
            self.inner = base()
            self.name = self.inner.name

        def send(self, msg):
            sent_raw[msg.recipient_id] = msg.raw
            return self.inner.send(msg)

        def find_by_message_id(self, *args):
            return self.inner.find_by_message_id(*args)

        def close(self):
            self.inner.close()

    b = body(5)
    b["template"]["text"] = "Hello {{ name }}\n.a line starting with a dot\n..and two\nbye"
    job_id = post(client, key, b).json["job_id"]
    with running(smtp_settings, dao, factory=Recording):
        assert wait_job_done(dao, job_id) == "completed"
    rows = recipients(dao, job_id)
    assert {r.status for r in rows} == {"sent"}
    for r in rows:
        (got,) = smtp.received(r.to_email)
        assert got == sent_raw[r.id]                       # byte for byte, dots and all
        assert r.gmail_message_id.startswith("Q")          # the server's queue id
        parsed = email.message_from_bytes(got, policy=email.policy.default)
        assert parsed["Message-ID"] == r.message_id
        assert ".a line starting with a dot\r\n..and two" in got.decode()
    assert [m[0] for m in smtp.messages] == [SENDER] * 5   # envelope sender
    assert smtp.connections == 1 and smtp.max_open == 1   # one connection for all five
    assert slot_holders(dao) == [None] * 4                 # freed when the runner stopped


def test_421_retries_after_smtp_transient_delay_then_sends(client, key, dao, smtp,
                                                           smtp_settings):
    smtp.rcpt_answers["user1@example.com"] = ["421 4.7.0 Too many concurrent SMTP connections"]
    job_id = post(client, key, body(3)).json["job_id"]
    with running(smtp_settings, dao):
        retrying = wait_for(lambda: [r for r in recipients(dao, job_id)
                                     if r.status == "retrying"], 10, message="the 421 retry")
        assert wait_job_done(dao, job_id) == "completed"
    (r,) = retrying
    assert r.to_email == "user1@example.com" and r.error_code == "smtp_421"
    assert "421 4.7.0 Too many concurrent SMTP connections" in r.error
    assert (r.next_attempt_at - r.updated_at).total_seconds() >= 0.99   # SMTP_TRANSIENT_DELAY
    rows = {r.to_email: r for r in recipients(dao, job_id)}
    assert rows["user1@example.com"].attempts == 1   # refused at RCPT: not an attempt
    assert all(len(smtp.received(f"user{i}@example.com")) == 1 for i in range(3))
    assert smtp.connections == 2   # the 421 dropped the first connection


def test_450_is_transient_and_550_fails_the_recipient_at_once(client, key, dao, smtp,
                                                               smtp_settings):
    smtp.rcpt_answers["user0@example.com"] = ["450 4.2.1 Mailbox busy"]
    smtp.rcpt_answers["user1@example.com"] = ["550 5.1.1 No such user"]
    job_id = post(client, key, body(3)).json["job_id"]
    with running(smtp_settings.with_overrides(smtp_transient_delay=0.2), dao):
        assert wait_job_done(dao, job_id) == "completed_with_errors"
    rows = {r.to_email: r for r in recipients(dao, job_id)}
    bad = rows["user1@example.com"]
    assert (bad.status, bad.error_code, bad.attempts) == ("failed", "smtp_5xx", 1)
    assert "550 5.1.1 No such user" in bad.error
    # a 450 at RCPT came before the message left: deferred, not an attempt
    assert (rows["user0@example.com"].status, rows["user0@example.com"].attempts) == ("sent", 1)
    assert smtp.received("user1@example.com") == []
    assert smtp.connections == 1   # neither answer ends the connection


def test_connections_are_reopened_after_max_messages_per_connection(client, key, dao, smtp,
                                                                    smtp_settings):
    job_id = post(client, key, body(7)).json["job_id"]
    with running(smtp_settings.with_overrides(smtp_max_messages_per_connection=3), dao):
        assert wait_job_done(dao, job_id) == "completed"
    assert len(smtp.messages) == 7
    assert smtp.connections == 3 and smtp.max_open == 1   # 3 + 3 + 1


def test_max_connections_holds_over_two_runners_and_each_mail_goes_once(
        client, key, dao, smtp, smtp_settings, monkeypatch):
    monkeypatch.setattr(transport_smtp, "IDLE_CLOSE", 0.5)
    s = smtp_settings.with_overrides(smtp_max_connections=2, runner_concurrency=3, claim_batch=4,
                                     max_attempts=20)
    job_ids = [post(client, key, body(12)).json["job_id"] for _ in range(2)]
    with running(s, dao, count=2):
        for job_id in job_ids:
            assert wait_job_done(dao, job_id) == "completed"
    assert smtp.max_open == 2          # never more than SMTP_MAX_CONNECTIONS at the server
    assert len(smtp.messages) == 24
    assert Counter(raw.split(b"Message-ID: ")[1].split(b"\r\n")[0]
                   for _, _, raw in smtp.messages).most_common(1)[0][1] == 1
    assert all(r.status == "sent" for j in job_ids for r in recipients(dao, j))
    assert slot_holders(dao) == [None, None]


def test_waiting_for_a_busy_connection_slot_does_not_use_up_attempts(
        client, key, dao, smtp, smtp_settings, monkeypatch, caplog):
    monkeypatch.setattr(transport_smtp, "IDLE_CLOSE", 0.2)
    monkeypatch.setattr(transport_smtp, "SLOT_WAIT", 0.02)     # give up on a slot at once
    monkeypatch.setattr(transport_smtp, "BUSY_RETRY", 0.05)
    s = smtp_settings.with_overrides(smtp_max_connections=1, runner_concurrency=2, claim_batch=4,
                                     max_attempts=1, sender_daily_cap=1000)
    job_id = post(client, key, body(10)).json["job_id"]
    with caplog.at_level(logging.INFO, logger="mailjobs.runner"):
        with running(s, dao, count=2):
            assert wait_job_done(dao, job_id, timeout=60) == "completed"
    assert any("smtp_busy" in r.getMessage() for r in caplog.records), "no slot was ever busy"
    rows = recipients(dao, job_id)
    assert all(r.status == "sent" and r.attempts == 1 for r in rows), \
        [(r.status, r.attempts, r.error_code) for r in rows]
    assert len(smtp.messages) == 10
    with dao.transaction() as cur:      # the busy tries were given back to the daily count
        cur.execute("SELECT SUM(sends) FROM sender_hourly_sends")
        assert int(cur.fetchone()[0]) == 10


def test_a_timeout_after_data_is_in_doubt_and_auto_resends(client, key, dao, smtp,
                                                           smtp_settings):
    smtp.data_delays = [1.5]
    job_id = post(client, key, body(1)).json["job_id"]
    with running(smtp_settings.with_overrides(smtp_timeout=0.5), dao):
        assert wait_job_done(dao, job_id) == "completed"
    (r,) = recipients(dao, job_id)
    assert (r.status, r.attempts) == ("sent", 2)
    # SMTP cannot look the first copy up (find_by_message_id: "unsupported"), so
    # IN_DOUBT_POLICY=auto resent it: at least once, here twice.
    wait_for(lambda: len(smtp.received("user0@example.com")) == 2, 5, message="both copies")


# -- the transport on its own ---------------------------------------------------------------------
@pytest.fixture()
def make_transport(dao, smtp_settings):
    made = []

    def make(size: int = 2, lease: float = 60.0, **kwargs) -> SmtpTransport:
        settings = smtp_settings.with_overrides(**kwargs)
        transport = SmtpTransport(settings, ConnectionSlots(dao, size, lease))
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


def test_a_failed_noop_or_a_closed_connection_is_reopened(smtp, make_transport):
    transport = make_transport()
    transport.send(message(1))
    transport.send(message(2))
    assert smtp.connections == 1
    smtp.noop_answers = ["421 4.4.2 Idle too long, closing"]
    transport.send(message(3))
    assert smtp.connections == 2
    smtp.drop_all()
    wait_for(lambda: not smtp.open, 5, message="the server to close")
    transport.send(message(4))
    assert smtp.connections == 3
    assert len(smtp.messages) == 4 and smtp.max_open == 1


def test_idle_connections_are_closed_and_their_slot_freed(dao, smtp, smtp_settings):
    transport = SmtpTransport(smtp_settings, ConnectionSlots(dao, 2), idle_close=0.3)
    try:
        transport.send(message(1))
        assert len(smtp.open) == 1 and slot_holders(dao) == [transport.holder, None]
        # the server counts it closed at QUIT, the slot is freed after the answer: wait for both
        wait_for(lambda: not smtp.open and slot_holders(dao) == [None, None], 5,
                 message="the idle connection to close and free its slot")
        transport.send(message(2))
        assert smtp.connections == 2
    finally:
        transport.close()
    assert slot_holders(dao) == [None, None]


def test_the_slot_lease_is_renewed_and_a_lost_slot_means_a_new_connection(dao, smtp,
                                                                           make_transport):
    transport = make_transport(size=2, lease=0.6)
    transport.send(message(1))
    (_, _, first_expiry), _ = dao.smtp_slots()
    time.sleep(0.25)                   # older than lease / 3
    transport.send(message(2))
    (_, holder, renewed), _ = dao.smtp_slots()
    assert holder == transport.holder and renewed > first_expiry
    with dao.transaction() as cur:    # its lease ran out and someone else took the slot
        cur.execute("UPDATE smtp_slots SET holder = 'someone-else' WHERE slot = 1")
    time.sleep(0.25)
    transport.send(message(3))
    assert slot_holders(dao) == ["someone-else", transport.holder]
    assert smtp.connections == 2 and len(smtp.messages) == 3


def test_no_free_slot_means_smtp_busy_without_connecting(dao, smtp, smtp_settings):
    slots = ConnectionSlots(dao, 1)
    holder = SmtpTransport(smtp_settings, slots)
    waiter = SmtpTransport(smtp_settings, slots, slot_wait=0.5)
    try:
        holder.send(message(1))
        with holder._lock:             # as while the holder sends: its connection is in use
            with pytest.raises(SendError) as caught:
                waiter.send(message(2))
        assert (caught.value.kind, caught.value.error_code) == ("rate", "smtp_busy")
        assert caught.value.retry_after and "SMTP_MAX_CONNECTIONS" in str(caught.value)
        assert caught.value.attempted is False
        assert smtp.connections == 1 and len(smtp.messages) == 1
        holder.close()                 # frees the slot: the waiter gets it
        waiter.send(message(2))
        assert len(smtp.messages) == 2
    finally:
        holder.close()
        waiter.close()


def test_an_idle_connection_gives_its_slot_to_a_waiting_thread_at_once(dao, smtp,
                                                                       smtp_settings):
    """Not after IDLE_CLOSE: a thread of the same process waiting for the only slot gets it
    once the holder's connection has been idle WANTED_IDLE_CLOSE seconds."""
    slots = ConnectionSlots(dao, 1)
    holder = SmtpTransport(smtp_settings, slots, idle_close=3600)
    waiter = SmtpTransport(smtp_settings, slots, slot_wait=30)
    try:
        holder.send(message(1))
        waiter.send(message(2))        # would wait an hour for the holder's idle close
        assert len(smtp.messages) == 2 and smtp.connections == 2 and smtp.max_open == 1
        assert slot_holders(dao) == [waiter.holder]
    finally:
        holder.close()
        waiter.close()


def test_connection_refused_is_transient_and_frees_the_slot(dao, smtp_settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = SmtpTransport(smtp_settings.with_overrides(smtp_port=port),
                              ConnectionSlots(dao, 2))
    with pytest.raises(SendError) as caught:
        transport.send(message(1))
    assert (caught.value.kind, caught.value.error_code) == ("transient", "connection_error")
    assert caught.value.attempted is False   # never left: deferred, not counted
    assert slot_holders(dao) == [None, None]
    transport.close()


def test_a_refused_login_is_sender_config_smtp_auth(dao, start_server, smtp_settings):
    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"mailer" and auth_data.password == b"right"
        return AuthResult(success=ok, handled=False)

    recorder, port = start_server(authenticator=authenticator, auth_require_tls=False)
    s = smtp_settings.with_overrides(smtp_port=port, smtp_username="mailer")
    wrong = SmtpTransport(s.with_overrides(smtp_password="wrong"), ConnectionSlots(dao, 2))
    right = SmtpTransport(s.with_overrides(smtp_password="right"), ConnectionSlots(dao, 2))
    try:
        with pytest.raises(SendError) as caught:
            wrong.send(message(1))
        assert (caught.value.kind, caught.value.error_code) == ("sender_config", "smtp_auth")
        assert "535" in str(caught.value)
        right.send(message(2))
        assert len(recorder.messages) == 1
    finally:
        wrong.close()
        right.close()


def test_starttls_not_offered_is_sender_config(dao, smtp, smtp_settings):
    transport = SmtpTransport(smtp_settings.with_overrides(smtp_security="starttls"),
                              ConnectionSlots(dao, 2))
    with pytest.raises(SendError) as caught:
        transport.send(message(1))
    assert (caught.value.kind, caught.value.error_code) == ("sender_config", "smtp_tls")
    assert slot_holders(dao) == [None, None]
    transport.close()


def test_lookup_is_unsupported_so_auto_resends_in_doubt_mail(make_transport, smtp_settings):
    transport = make_transport()
    with pytest.raises(SendError) as caught:
        transport.find_by_message_id(SENDER, "<m1@example.com>")
    assert (caught.value.kind, caught.value.error_code) == ("transient", "unsupported")

    class R:   # the fields resolve_in_doubt reads
        id, message_id, error_code, error, attempts, attempts_base = 1, "<m1@x>", None, None, 1, 0

    class J:
        id, sender_email = 1, SENDER

    assert EmailScheduler(smtp_settings).resolve_in_doubt(transport, J, R) is None   # resend


def test_provider_id_is_the_queue_id_else_the_message_id():
    assert transport_smtp.provider_id(b"2.0.0 Ok: queued as 4F3A21B9C", "<m@x>") == "4F3A21B9C"
    assert transport_smtp.provider_id(b"OK id=1abcde-000123-AB", "<m@x>") == "1abcde-000123-AB"
    assert transport_smtp.provider_id(b"2.0.0 OK", "<m@x>") == "<m@x>"
    assert len(transport_smtp.provider_id(None, "<" + "x" * 100 + ">")) == 64


def test_a_connection_closed_with_quit_a_moment_ago_still_counts_for_a_refusal(dao):
    """A server counts a connection until it has processed its close, a moment after the client
    let go of the slot: a connection refused in that moment counts the closing one (so the cap
    is not lowered below the server's limit). One that broke (a server restart) does not count:
    every reconnection is refused then, and that is no limit."""
    slots = ConnectionSlots(dao, 3)
    now = datetime.now(UTC)
    quit_slot, broken_slot = slots.acquire("a"), slots.acquire("b")
    for slot, holder in ((quit_slot, "a"), (broken_slot, "b")):
        slots.mark_established(slot, holder, now - timedelta(seconds=5))
    assert slots.established_by_others("c", now) == 2
    slots.release(quit_slot, "a", closed_by_us=True)
    slots.release(broken_slot, "b", closed_by_us=False)
    assert slots.established_by_others("c", now) == 1      # the one closed with QUIT
    assert set(slot_holders(dao)) == {None}
    with dao.transaction() as cur:   # a second later the server has long processed the close
        cur.execute("UPDATE smtp_slots SET released_at = released_at - INTERVAL 2 SECOND "
                    "WHERE released_at IS NOT NULL")
    assert slots.established_by_others("c", now) == 0
