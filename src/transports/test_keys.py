"""Where a test key's jobs send (issue 18): never the real transport.

A test key (`mailjobs api-key create --test`) runs the whole pipeline: validation, rendering,
claiming (without the sender's rate and daily limits, and without charging them), recording,
events. Only the last step differs: its messages go to the outbox directory (`--test`, the
default: `<OUTBOX_DIR>/<job_id>/<recipient_id>.eml`) or nowhere (`--test=null`), whatever
MAIL_TRANSPORT says. A key's mode is fixed when it is created, so it is read once per process.
"""
from __future__ import annotations

import threading

from mailjobs.dao_mysql import Dao
from mailjobs.settings import Settings
from mailjobs.transports.base import Transport


class TestKeys:
    """The test mode of API keys ("outbox", "null", or None for a real key), cached."""

    __test__ = False   # not a pytest test class

    def __init__(self, dao: Dao) -> None:
        self._dao = dao
        self._modes: dict[int, str | None] = {}
        self._lock = threading.Lock()

    def mode(self, api_key_id: int) -> str | None:
        with self._lock:
            if api_key_id in self._modes:
                return self._modes[api_key_id]
        key = self._dao.api_key_by_id(api_key_id)
        mode = key.test_mode if key is not None else None
        with self._lock:
            self._modes[api_key_id] = mode
        return mode


def test_transport(mode: str, settings: Settings) -> Transport:
    """A new transport of a test key's mode (the runner keeps one per sending thread)."""
    if mode == "null":
        from mailjobs.transports.null import NullTransport

        return NullTransport()
    from mailjobs.transports.factory import outbox_path
    from mailjobs.transports.outbox import OutboxTransport

    return OutboxTransport(outbox_path(settings))


test_transport.__test__ = False   # type: ignore[attr-defined]  # not a pytest test
