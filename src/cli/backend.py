"""Where the CLI's job commands get their answers: the database directly (`LocalBackend`), or a
remote mailjobs API (`RemoteBackend`, with --url and an API key). Both return the API's JSON
shapes (views.py), so the commands print the same whatever the source."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from mailjobs import export, job_control
from mailjobs.dao_mysql import Dao
from mailjobs.deliverability.addresses import InvalidAddress, normalize_address
from mailjobs.settings import Settings
from mailjobs.states import JobAction, PausedBy
from mailjobs.transports.test_keys import TestKeys
from mailjobs.web.views import (
    job_view,
    keyset_page,
    learned_caps_view,
    recipient_view,
    runner_view,
    sender_view,
    trace_view,
)


class BackendError(Exception):
    """One sentence for the user; the command exits non-zero."""


class Backend(Protocol):
    def jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]: ...
    def job(self, job_id: int) -> dict[str, Any]: ...
    def recipients(self, job_id: int, status: str | None, limit: int,
                   after: int) -> dict[str, Any]: ...
    def control(self, job_id: int, action: str) -> dict[str, Any]: ...
    def retry(self, job_id: int, statuses: list[str], codes: list[str]) -> dict[str, Any]: ...
    def runners(self) -> list[dict[str, Any]]: ...
    def senders(self) -> list[dict[str, Any]]: ...
    def learned_caps(self) -> list[dict[str, Any]]: ...
    def trace(self, email: str, limit: int, before: int | None) -> dict[str, Any]: ...
    def export_csv(self, job_id: int) -> Iterator[bytes]: ...


class LocalBackend:
    """Straight to the database: an operator's view of every key's jobs."""

    def __init__(self, settings: Settings, dao: Dao) -> None:
        self.settings = settings
        self.dao = dao
        self.test_keys = TestKeys(dao)

    def jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        jobs = self.dao.jobs_page(None, None, limit, status)
        counts = self.dao.job_counts([j.id for j in jobs])
        return [job_view(j, counts=counts[j.id],
                         test=self.test_keys.mode(j.api_key_id) is not None) for j in jobs]

    def job(self, job_id: int) -> dict[str, Any]:
        job = self.dao.job(job_id, with_counts=True)
        if job is None:
            raise BackendError(f"no job {job_id}")
        return job_view(job, self.dao.error_summary(job_id),
                        test=self.test_keys.mode(job.api_key_id) is not None)

    def recipients(self, job_id: int, status: str | None, limit: int,
                   after: int) -> dict[str, Any]:
        self.job(job_id)
        rows, next_after = keyset_page(self.dao.recipients_page(job_id, status, after, limit + 1),
                                       limit)
        return {"recipients": [recipient_view(r) for r in rows], "next_after": next_after}

    def control(self, job_id: int, action: str) -> dict[str, Any]:
        self.job(job_id)
        try:
            if action == JobAction.CANCEL:
                job_control.cancel(self.dao, job_id, "the mailjobs CLI")
            elif action == JobAction.PAUSE:
                job_control.pause(self.dao, job_id, PausedBy.OPERATOR, "paused from the mailjobs CLI")
            else:
                job_control.resume(self.dao, job_id)
        except job_control.Conflict as exc:
            raise BackendError(str(exc)) from None
        return self.job(job_id)

    def retry(self, job_id: int, statuses: list[str], codes: list[str]) -> dict[str, Any]:
        self.job(job_id)
        try:
            job_control.retry(self.dao, job_id, statuses, codes)
        except job_control.Conflict as exc:
            raise BackendError(str(exc)) from None
        return self.job(job_id)

    def runners(self) -> list[dict[str, Any]]:
        stale = self.settings.runner_stale_after
        return [runner_view(r, stale) for r in self.dao.runners(100)]

    def trace(self, email: str, limit: int, before: int | None) -> dict[str, Any]:
        try:
            email = normalize_address(email.strip())
        except InvalidAddress as exc:
            raise BackendError(f"{email!r} is not an address: {exc}") from None
        return trace_view(email, self.dao.recipients_by_email(email, None, before, limit + 1), limit,
                          self.dao.suppressions_of_email(email, None))

    def export_csv(self, job_id: int) -> Iterator[bytes]:
        if self.dao.job(job_id) is None:
            raise BackendError(f"no job {job_id}")
        return (chunk.encode() for chunk in export.csv_chunks(self.dao.export_recipients_page,
                                                              job_id))

    def senders(self) -> list[dict[str, Any]]:
        limits = (self.settings.sender_rate_per_minute, self.settings.sender_daily_cap)
        return [sender_view(r, self.dao.sender_sends_24h(r["email"]), limits)
                for r in self.dao.senders()]

    def learned_caps(self) -> list[dict[str, Any]]:
        return learned_caps_view(self.dao.learned_caps())


class RemoteBackend:
    """Through the HTTP API of a running mailjobs, with an API key."""

    def __init__(self, url: str, key: str, timeout: float = 30.0) -> None:
        import requests

        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = key
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import requests

        try:
            r = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise BackendError(f"cannot reach {self.url}: {exc}") from None
        try:
            body: dict[str, Any] = r.json()
        except ValueError:
            raise BackendError(f"{method} {path}: HTTP {r.status_code}, not JSON") from None
        if r.status_code >= 400:
            raise BackendError(f"{body.get('message', 'error')} (HTTP {r.status_code})")
        return body

    def jobs(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        params = {"limit": limit, **({"status": status} if status else {})}
        rows: list[dict[str, Any]] = self._call("GET", "/api/jobs", params=params)["jobs"]
        return rows

    def job(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/jobs/{job_id}")

    def recipients(self, job_id: int, status: str | None, limit: int,
                   after: int) -> dict[str, Any]:
        params = {"limit": limit, "after": after, **({"status": status} if status else {})}
        return self._call("GET", f"/api/jobs/{job_id}/recipients", params=params)

    def control(self, job_id: int, action: str) -> dict[str, Any]:
        return self._call("POST", f"/api/jobs/{job_id}/{action}")

    def retry(self, job_id: int, statuses: list[str], codes: list[str]) -> dict[str, Any]:
        return self._call("POST", f"/api/jobs/{job_id}/retry",
                          json={"status": statuses, "error_code": codes})

    def runners(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", "/api/runners")["runners"]
        return rows

    def senders(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", "/api/senders")["senders"]
        return rows

    def learned_caps(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", "/api/senders")["learned_caps"]
        return rows

    def trace(self, email: str, limit: int, before: int | None) -> dict[str, Any]:
        params = {"email": email, "limit": limit, **({"before": before} if before else {})}
        return self._call("GET", "/api/recipients", params=params)

    def export_csv(self, job_id: int) -> Iterator[bytes]:
        """The API's recipients.csv, streamed through (never held whole)."""
        import requests

        path = f"/api/jobs/{job_id}/recipients.csv"
        try:
            r = self.session.get(self.url + path, timeout=self.timeout, stream=True)
        except requests.RequestException as exc:
            raise BackendError(f"cannot reach {self.url}: {exc}") from None
        if r.status_code >= 400:
            try:
                message = r.json().get("message", "error")
            except ValueError:
                message = "not JSON"
            raise BackendError(f"{message} (HTTP {r.status_code})")
        return self._stream(r)

    @staticmethod
    def _stream(r: Any) -> Iterator[bytes]:
        import requests

        try:
            yield from r.iter_content(chunk_size=64 * 1024)
        except requests.RequestException as exc:
            raise BackendError(f"the export was cut off: {exc}") from None
        finally:
            r.close()
