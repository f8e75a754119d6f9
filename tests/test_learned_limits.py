"""The far side's limits (learned_limits.py): a refusal before the message left is not an
attempt, and the cap over all runners is learned from the refusals.

Real peers: aiosmtpd on 127.0.0.1 that answers `421 4.7.0 too many connections` to a connection
beyond its limit (or to every connection for a while), and the fake Gmail over HTTP answering
429 "Too many concurrent requests for user" above 3 sends of one sender at once."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter

import pytest
from aiosmtpd.smtp import SMTP as SMTPServer
from prometheus_client.parser import text_string_to_metric_families

from mailjobs.transports.learned_limits import GMAIL, SMTP, LearnedLimits
from runner_helpers import SENDER, fast, recipients, running, wait_job_done
from test_api_enqueue import body, post
from test_dashboard import login
from test_transport_smtp import CountingController, CountingSMTP, Recorder

LIMIT_LOG = "mailjobs.limits"


# -- an SMTP server with a per-client connection limit ------------------------------------------
class Refuser(asyncio.Protocol):
    """What a server at its connection limit does: a 421 greeting, then it hangs up."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def connection_made(self, transport) -> None:
        transport.write(self.answer)
        transport.close()


class LimitedRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.limit: int | None = None       # connections open at once; more get a 421
        self.refuse_all = False             # every connection gets a 421
        self.refused = 0

    def admit(self, make) -> asyncio.Protocol:
        """Counted open here, when the connection is accepted: asyncio accepts a burst of
        connections (calling the factory for each) before any of their connection_made runs."""
        with self.lock:
            full = self.refuse_all or (self.limit is not None and len(self.open) >= self.limit)
            if full:
                self.refused += 1
                return Refuser(b"421 4.7.0 mx.test: too many connections from 127.0.0.1\r\n")
            server = make()
            self.open.add(server)
            self.connections += 1
            self.max_open = max(self.max_open, len(self.open))
            return server


class AdmittedSMTP(CountingSMTP):
    def connection_made(self, transport):   # counted at accept (LimitedRecorder.admit)
        SMTPServer.connection_made(self, transport)


class LimitedController(CountingController):
    def factory(self):
        return self.handler.admit(lambda: AdmittedSMTP(self.handler, **self.SMTP_kwargs))


@pytest.fixture()
def limited_server():
    handler = LimitedRecorder()
    controller = LimitedController(handler, hostname="127.0.0.1", port=0)
    controller.start()
    deadline = time.monotonic() + 5
    while handler.open and time.monotonic() < deadline:   # the controller's start-up probe
        time.sleep(0.01)
    handler.reset()
    yield handler, controller.port
    controller.stop()


@pytest.fixture()
def smtp_settings(dao, limited_server):
    return fast(dao.settings, mail_transport="smtp", smtp_host="127.0.0.1",
                smtp_port=limited_server[1], smtp_security="none", smtp_timeout=5.0,
                smtp_transient_delay=0.3, smtp_max_connections=6, runner_concurrency=6,
                claim_batch=50, max_attempts=2)


def message_ids(smtp) -> Counter:
    return Counter(raw.split(b"Message-ID: ")[1].split(b"\r\n")[0]
                   for _, _, raw in smtp.messages)


def lowered_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LIMIT_LOG and r.levelno == logging.WARNING]


# -- SMTP ------------------------------------------------------------------------------------------
def test_smtp_cap_is_learned_from_421_and_no_mail_is_lost(client, key, dao, limited_server,
                                                         smtp_settings, make_key, run, caplog):
    smtp, port = limited_server
    smtp.limit = 2
    job_id = post(client, key, body(300)).json["job_id"]
    with caplog.at_level(logging.INFO):
        with running(smtp_settings, dao):
            assert wait_job_done(dao, job_id, timeout=120) == "completed"
    rows = recipients(dao, job_id)
    assert {r.status for r in rows} == {"sent"}
    # the refusals were not attempts: every recipient went out at its first
    assert Counter(r.attempts for r in rows) == {1: 300}
    ids = message_ids(smtp)
    assert len(ids) == 300 and max(ids.values()) == 1          # each exactly once
    assert smtp.max_open <= 2
    assert 0 < smtp.refused < 300 / 10, smtp.refused            # learning cost few retries
    (cap,) = dao.learned_caps()
    assert (cap.kind, cap.target, cap.cap, cap.configured) == (SMTP, f"127.0.0.1:{port}", 2, 6)
    assert "421 4.7.0 mx.test: too many connections" in cap.reason
    # one WARNING per lowering (6 -> ... -> 2 is at most four), never one per recipient
    warnings = lowered_warnings(caplog)
    assert 1 <= len(warnings) <= 4, warnings
    assert all(f"smtp 127.0.0.1:{port} refused connection" in w and "cap lowered" in w
               and "for 10 min" in w for w in warnings), warnings
    assert warnings[-1].split("cap lowered ")[1].startswith(tuple(f"{n} → 2" for n in range(3, 7)))

    # every surface shows it: the API, the CLI, the dashboard and /metrics
    op = make_key(operator=True, name="ops")
    (api,) = client.get("/api/senders", headers={"X-API-Key": op}).json["learned_caps"]
    assert (api["kind"], api["target"], api["cap"], api["configured"], api["lowered"]) == \
        ("smtp", f"127.0.0.1:{port}", 2, 6, True)
    assert "too many connections" in api["reason"] and api["hold_until"] is not None
    out = run("senders", "caps", "--json")
    assert out.exit_code == 0, out.output
    assert [(c["target"], c["cap"]) for c in json.loads(out.stdout)] == \
        [(f"127.0.0.1:{port}", 2)]
    text = run("senders").stdout
    assert "1 cap(s) lowered after refusals" in text and f"127.0.0.1:{port}" in text
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {op}"}).get_data(
        as_text=True)
    samples = {(s.name, s.labels.get("kind"), s.labels.get("target")): s.value
               for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert samples[("mailjobs_learned_cap", "smtp", f"127.0.0.1:{port}")] == 2
    assert samples[("mailjobs_learned_cap_configured", "smtp", f"127.0.0.1:{port}")] == 6
    login(client, op)
    page = client.get("/dashboard/senders").text
    caps = page[page.index('id="learned-caps"'):]
    assert f"127.0.0.1:{port}" in caps and "2 / 6" in caps and "too many connections" in caps


def test_a_server_refusing_every_connection_costs_no_attempt(client, key, dao, limited_server,
                                                             smtp_settings):
    """MAX_ATTEMPTS=2 and a retry every 0.3 s: before, a 4 s refusal burnt both attempts and
    failed the recipients. Refusals with nothing open teach no cap."""
    smtp, _ = limited_server
    smtp.refuse_all = True
    job_id = post(client, key, body(20)).json["job_id"]
    with running(smtp_settings, dao):
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            time.sleep(0.05)
            assert {r.status for r in recipients(dao, job_id)} <= {"queued", "sending",
                                                                    "retrying"}
        assert smtp.refused >= 20          # every recipient was refused at least once
        smtp.refuse_all = False
        assert wait_job_done(dao, job_id, timeout=60) == "completed"
    rows = recipients(dao, job_id)
    assert {(r.status, r.attempts) for r in rows} == {("sent", 1)}
    assert max(message_ids(smtp).values()) == 1 and len(smtp.messages) == 20
    assert dao.learned_caps() == []        # nothing was open: an outage, not a limit


def test_refused_past_max_defer_fails_with_the_refusal(client, key, dao, limited_server,
                                                       smtp_settings):
    smtp, _ = limited_server
    smtp.refuse_all = True
    job_id = post(client, key, body(3)).json["job_id"]
    with running(smtp_settings.with_overrides(max_defer=1.5), dao):
        assert wait_job_done(dao, job_id, timeout=30) == "failed"
    for r in recipients(dao, job_id):
        assert (r.status, r.error_code, r.attempts) == ("failed", "smtp_421", 0)
        assert "MAX_DEFER" in r.error and "421 4.7.0 mx.test: too many connections" in r.error
    assert smtp.messages == []


def test_4xx_before_data_is_not_an_attempt_but_after_data_it_is(client, key, dao,
                                                                  limited_server, smtp_settings):
    smtp, _ = limited_server
    smtp.rcpt_answers["user0@example.com"] = ["450 4.2.1 Mailbox busy"] * 3
    job_id = post(client, key, body(2)).json["job_id"]
    with running(smtp_settings.with_overrides(runner_concurrency=1), dao):
        assert wait_job_done(dao, job_id, timeout=30) == "completed"
    rows = {r.to_email: r for r in recipients(dao, job_id)}
    # three 450s at RCPT with MAX_ATTEMPTS=2: refused before DATA, so still sent at attempt 1
    assert (rows["user0@example.com"].status, rows["user0@example.com"].attempts) == ("sent", 1)
    assert len(smtp.received("user0@example.com")) == 1


# -- the shared cap itself -----------------------------------------------------------------------
def test_caps_go_down_multiplicatively_and_up_additively_for_every_runner(dao, caplog):
    s = dao.settings.with_overrides(smtp_max_connections=6, learned_cap_hold=0.0,
                                    learned_cap_raise_after=3)
    one, other = LearnedLimits(s, dao), LearnedLimits(s, dao)
    with caplog.at_level(logging.INFO, logger=LIMIT_LOG):
        assert one.refused(SMTP, "mx:25", 0, "421 busy") == 6       # nothing open: no limit
        assert one.refused(SMTP, "mx:25", 3, "421 too many") == 3
        assert other.refused(SMTP, "mx:25", 4, "421 too many") == 3  # above the cap: kept
        assert one.refused(SMTP, "mx:25", 2, "421 too many") == 2
    assert len(lowered_warnings(caplog)) == 2                       # 6 → 3 and 3 → 2
    other.refresh(force=True)
    assert other.cap(SMTP, "mx:25") == 2                            # shared through the DB
    for _ in range(5):
        other.succeeded(SMTP, "mx:25")
    other.flush()                      # 5 successes past the hold: +1 (3 per raise)
    one.refresh(force=True)
    assert one.cap(SMTP, "mx:25") == 3
    for _ in range(30):
        one.succeeded(SMTP, "mx:25")
        one.flush()
    one.refresh(force=True)
    assert one.cap(SMTP, "mx:25") == 6                              # never above configured
    (row,) = dao.learned_caps()
    assert (row.cap, row.configured) == (6, 6)


def test_a_cap_is_held_before_it_is_raised(dao):
    s = dao.settings.with_overrides(gmail_max_concurrent_per_sender=8, learned_cap_hold=600.0,
                                    learned_cap_raise_after=1)
    limits = LearnedLimits(s, dao)
    limits.refused(GMAIL, SENDER, 3, "429 Too many concurrent requests for user")
    for _ in range(50):
        limits.succeeded(GMAIL, SENDER)
    limits.flush()
    limits.refresh(force=True)
    assert limits.cap(GMAIL, SENDER) == 3
    (row,) = dao.learned_caps()
    assert row.successes == 50


# -- Gmail -----------------------------------------------------------------------------------------
def test_gmail_concurrency_cap_is_learned_and_no_mail_is_lost(client, key, dao, fake,
                                                             gmail_settings, caplog):
    fake.concurrency_limit[SENDER] = 3
    fake.send_latency = 0.03
    s = gmail_settings.with_overrides(runner_concurrency=6, gmail_max_concurrent_per_sender=6,
                                      claim_batch=50, max_attempts=2)
    job_id = post(client, key, body(300)).json["job_id"]
    with caplog.at_level(logging.INFO):
        with running(s, dao):
            assert wait_job_done(dao, job_id, timeout=120) == "completed"
    rows = recipients(dao, job_id)
    assert Counter((r.status, r.attempts) for r in rows) == {("sent", 1): 300}
    assert fake.count() == 300 and len({m.id for m in fake.sent}) == 300
    assert len({r.to_email for r in rows}) == 300
    assert all(len(fake.sent_to(r.to_email)) == 1 for r in rows)
    assert 0 < fake.refused_concurrent < 300 / 10, fake.refused_concurrent
    (cap,) = dao.learned_caps()
    assert (cap.kind, cap.target, cap.cap, cap.configured) == (GMAIL, SENDER, 3, 6)
    assert "Too many concurrent requests for user" in cap.reason
    warnings = lowered_warnings(caplog)
    assert 1 <= len(warnings) <= 3, warnings
    assert all(f"gmail {SENDER} refused concurrent request" in w for w in warnings)


def test_slot_wait_for_a_busy_sender_is_not_an_attempt(client, key, dao, fake, gmail_settings,
                                                      monkeypatch):
    from mailjobs.transports import gmail as transport_gmail

    monkeypatch.setattr(transport_gmail, "GATE_WAIT", 0.05)
    monkeypatch.setattr(transport_gmail, "BUSY_RETRY", 0.05)
    fake.send_latency = 0.3
    s = gmail_settings.with_overrides(runner_concurrency=4, gmail_max_concurrent_per_sender=1,
                                      max_attempts=1)
    job_id = post(client, key, body(6)).json["job_id"]
    with running(s, dao):
        assert wait_job_done(dao, job_id, timeout=60) == "completed"
    assert fake.max_concurrent[SENDER] == 1
    assert {(r.status, r.attempts) for r in recipients(dao, job_id)} == {("sent", 1)}


def test_an_operator_forgets_a_learned_cap(dao, run):
    s = dao.settings.with_overrides(smtp_max_connections=6)
    LearnedLimits(s, dao).refused(SMTP, "mx.example.com:587", 2, "421 too many connections")
    assert [c.cap for c in dao.learned_caps()] == [2]
    out = run("senders", "reset-cap", "smtp", "mx.example.com:587")
    assert out.exit_code == 0, out.output
    assert "learned cap forgotten" in out.stdout and dao.learned_caps() == []
    again = run("senders", "reset-cap", "smtp", "mx.example.com:587")
    assert again.exit_code != 0 and "no learned cap for smtp mx.example.com:587" in again.output
