"""Delivering the events outbox: a runner's webhook thread and its senders.

Each runner runs one `Dispatcher` thread beside its sending loop, so a slow receiver never
slows sending. It claims endpoints that have something due (SKIP LOCKED, under a lease of
WEBHOOK_LEASE_SECONDS) and delivers each one's POSTs one at a time, oldest first (so the events
of one recipient arrive in order). Two lanes of WEBHOOK_CONCURRENCY endpoints each: one for
endpoints whose last attempt succeeded, one for those failing (hanging up to WEBHOOK_TIMEOUT,
answering 5xx), so failing receivers never hold up the others' events (no head-of-line
blocking); an endpoint in backoff is not claimed at all until its next try is due:

  next delivery (its events batched now if it is new) -> POST, no connection held -> record

A 2xx delivers. Anything else, a timeout or a refused connection is retried after the next
step of WEBHOOK_RETRY_SCHEDULE (jitter, at least Retry-After); the endpoint waits with it. `410
Gone` disables the endpoint at once; an endpoint failing for WEBHOOK_DISABLE_AFTER is disabled,
the reason stored. A runner that dies mid-delivery leaves its lease to expire: another runner
sends the same POST again (same webhook-id): at least once.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import Any

from mailjobs import metrics
from mailjobs.dao_mysql import Dao, DatabaseUnavailable
from mailjobs.settings import Settings
from mailjobs.webhooks import post as webhooks

log = logging.getLogger("mailjobs.webhooks")
# Events fetched for one round of an endpoint's POSTs (one transaction; at least one POST).
ROUND_EVENTS = 200
# Seconds a runner keeps delivering to one endpoint before it gives it back for others to take.
HOLD_SECONDS = 30.0


def new_msg_id() -> str:
    return "msg_" + secrets.token_hex(12)


def body_of(payloads: list[str], batch_size: int) -> bytes:
    """One event as it is, or (batch_size > 1) a JSON array of them."""
    if batch_size <= 1 and len(payloads) == 1:
        return payloads[0].encode()
    return ("[" + ",".join(payloads) + "]").encode()


class Signer:
    """Decrypts an endpoint's stored secrets (Fernet, TOKEN_ENCRYPTION_KEY) and signs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._fernet: Any = None

    @property
    def fernet(self) -> Any:
        if self._fernet is None:
            from mailjobs.transports.credentials import fernet

            self._fernet = fernet(self.settings)
        return self._fernet

    def encrypt(self, secret: str) -> bytes:
        token: bytes = self.fernet.encrypt(secret.encode())
        return token

    def secrets_of(self, endpoint: dict[str, Any]) -> list[str]:
        out = [self.fernet.decrypt(endpoint["secret"]).decode()]
        if endpoint.get("previous_secret"):
            out.append(self.fernet.decrypt(endpoint["previous_secret"]).decode())
        return out

    def send(self, endpoint: dict[str, Any], msg_id: str, body: bytes) -> webhooks.Answer:
        headers = webhooks.signed_headers(self.secrets_of(endpoint), msg_id, body)
        return webhooks.post(endpoint["url"], body, headers, self.settings)


class Dispatcher:
    def __init__(self, settings: Settings, dao: Dao, runner_id: str,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.dao = dao
        self.id = runner_id
        self.stop = stop
        self.signer = Signer(settings)
        self.slots = max(1, settings.webhook_concurrency)   # per lane
        self._pool = ThreadPoolExecutor(2 * self.slots,
                                        thread_name_prefix=f"{runner_id}-webhook")
        self._in_flight: dict[Future[Any], bool] = {}   # -> whether its endpoint was failing
        self._thread = threading.Thread(target=self.run, name=f"{runner_id}-webhooks",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        backoff = self.settings.webhook_poll_interval
        try:
            while not self.stop.is_set():
                try:
                    claimed = self.tick()
                    backoff = self.settings.webhook_poll_interval
                except DatabaseUnavailable as exc:
                    backoff = min(max(backoff * 2, 1.0), self.settings.db_backoff_max)
                    log.warning("webhooks of runner %s: database unavailable (%s); next try in "
                                "%.1f s", self.id, exc, backoff)
                    self.stop.wait(backoff)
                    continue
                except Exception:
                    backoff = min(max(backoff * 2, 1.0), self.settings.db_backoff_max)
                    log.exception("webhooks of runner %s: iteration failed; next try in %.1f s",
                                  self.id, backoff)
                    self.stop.wait(backoff)
                    continue
                if self._in_flight and (claimed == 0 or len(self._in_flight) >= 2 * self.slots):
                    wait(list(self._in_flight), timeout=self.settings.webhook_poll_interval,
                         return_when=FIRST_COMPLETED)
                elif claimed == 0:
                    self.stop.wait(self.settings.webhook_poll_interval)
        finally:
            self._pool.shutdown(wait=True)   # each stops after its POST in hand

    def tick(self) -> int:
        """Claim endpoints for the free slots of each lane and start delivering to them; how
        many."""
        for future in [f for f in self._in_flight if f.done()]:
            self._in_flight.pop(future)
        failing = sum(self._in_flight.values())
        healthy = len(self._in_flight) - failing
        if healthy >= self.slots and failing >= self.slots:
            return 0
        taken = self.dao.claim_webhook_endpoints(self.id, self.slots - healthy,
                                                 self.slots - failing,
                                                 self.settings.webhook_lease_seconds)
        for endpoint_id, lane in taken:
            self._in_flight[self._pool.submit(self._serve, endpoint_id)] = lane
        return len(taken)

    def _serve(self, endpoint_id: int) -> None:
        """Deliver this endpoint's POSTs in order, a round of up to ROUND_EVENTS events at a
        time, until one fails, none is left, or HOLD_SECONDS passed (then another runner may
        take it: endpoints are shared fairly)."""
        until = time.monotonic() + HOLD_SECONDS
        try:
            while not self.stop.is_set():
                lease_from = time.monotonic()
                got = self.dao.next_webhook_deliveries(endpoint_id, self.id, new_msg_id,
                                                       self.settings.webhook_lease_seconds,
                                                       ROUND_EVENTS)
                if got is None or not got[1]:
                    return
                if not self._round(got[0], got[1], lease_from) or time.monotonic() >= until:
                    return
        except Exception:
            log.exception("webhook endpoint=%d: delivery failed in runner %s; its lease "
                          "will expire and it is tried again", endpoint_id, self.id)
        finally:
            try:
                self.dao.release_webhook_endpoint(endpoint_id, self.id)
            except DatabaseUnavailable as exc:
                log.warning("webhook endpoint=%d: lease not given back (%s); it expires",
                            endpoint_id, exc)

    def _round(self, endpoint: dict[str, Any], deliveries: list[dict[str, Any]],
               lease_from: float) -> bool:
        """Send these POSTs one after the other; record the delivered ones together. False
        when one failed (it is recorded, the endpoint waits) or the lease is running out."""
        # a POST is started only while it ends (2 x timeout at most) within the lease
        guard = self.settings.webhook_lease_seconds - 2 * self.settings.webhook_timeout
        delivered: dict[int, list[int]] = {}
        try:
            for n, d in enumerate(deliveries):
                if n and (self.stop.is_set() or time.monotonic() - lease_from > guard):
                    return False
                answer = self._post(endpoint, d)
                if answer.ok:
                    delivered.setdefault(int(answer.status or 0), []).append(d["delivery_id"])
                    continue
                self._failed(endpoint, d, answer)
                return False
            return True
        finally:
            for status, ids in delivered.items():
                self.dao.webhooks_delivered(endpoint["id"], ids, self.id, status)
                metrics.WEBHOOK_DELIVERIES.labels("delivered").inc(len(ids))

    def _post(self, endpoint: dict[str, Any], d: dict[str, Any]) -> webhooks.Answer:
        body = body_of(d["payloads"], endpoint["batch_size"])
        answer = self.signer.send(endpoint, d["msg_id"], body)
        if answer.ok:
            log.info("%s delivered: HTTP %s", _where(endpoint, d), answer.status)
        return answer

    def _failed(self, endpoint: dict[str, Any], d: dict[str, Any],
                answer: webhooks.Answer) -> None:
        delay = webhooks.next_delay(self.settings, d["attempts"] + 1, answer.retry_after)
        reason = self._disable_reason(endpoint, answer)
        self.dao.webhook_attempt_failed(endpoint["id"], d["delivery_id"], self.id, answer.status,
                                        answer.error or "error", delay, reason)
        metrics.WEBHOOK_DELIVERIES.labels("disabled" if reason else "failed").inc()
        if reason:
            log.error("%s failed: %s; endpoint disabled: %s", _where(endpoint, d), answer.error,
                      reason)
        else:
            log.warning("%s failed: %s; next try in %.1f s", _where(endpoint, d), answer.error,
                        delay)

    def _disable_reason(self, endpoint: dict[str, Any], answer: webhooks.Answer) -> str | None:
        if answer.status == 410:
            return "the receiver answered 410 Gone"
        since = endpoint["failing_since"]
        if since is None:
            return None
        failing = (datetime.now(UTC) - since).total_seconds()
        if failing < self.settings.webhook_disable_after:
            return None
        return (f"every attempt failed since {since:%Y-%m-%d %H:%M:%S} UTC (more than "
                f"WEBHOOK_DISABLE_AFTER, {self.settings.webhook_disable_after:g} s); last: "
                f"{answer.error}")


def _where(endpoint: dict[str, Any], d: dict[str, Any]) -> str:
    return (f"webhook endpoint={endpoint['id']} delivery={d['delivery_id']} id={d['msg_id']} "
            f"events={len(d['payloads'])} attempt={d['attempts'] + 1}")
