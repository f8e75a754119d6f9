"""What the blueprints reach through the app they serve: its store (the Dao), its settings, the
key checks, and what this process is told at start (an embedded runner, whom to wake).

`create_app` puts one AppState in `app.extensions["mailjobs"]`; routes call `get_store()` and
`get_settings()` (flaskr's `get_db()`), never a closure over them. A blueprint that keeps
something of its own per app (a semaphore, a signer) makes it in a `record_once` callback.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

from flask import current_app, g
from flask.sansio.app import App

from mailjobs.api_keys import KeyVerifier
from mailjobs.dao_mysql import Dao
from mailjobs.records import ApiKey
from mailjobs.settings import Settings
from mailjobs.transports.test_keys import TestKeys

EXTENSION = "mailjobs"


class AppState(TypedDict):
    dao: Dao
    settings: Settings
    verifier: KeyVerifier        # API keys presented in X-API-Key (and at the dashboard's login)
    test_keys: TestKeys          # which keys are test keys (their jobs send nothing)
    runs_runner: bool            # this process runs an embedded JobRunner (/healthz needs one)
    on_enqueue: Callable[[], None] | None   # wakes that runner when work was added


def init_app(app: App, settings: Settings, dao: Dao, runs_runner: bool = False,
             on_enqueue: Callable[[], None] | None = None) -> None:
    app.extensions[EXTENSION] = AppState(dao=dao, settings=settings, verifier=KeyVerifier(dao),
                                         test_keys=TestKeys(dao), runs_runner=runs_runner,
                                         on_enqueue=on_enqueue)


def app_state(app: App | None = None) -> AppState:
    """The AppState of `app` (of the app serving this request when None)."""
    state: AppState = (app or current_app).extensions[EXTENSION]
    return state


def get_store() -> Dao:
    """The Dao of the app serving this request."""
    return app_state()["dao"]


def get_settings() -> Settings:
    return app_state()["settings"]


def api_key() -> ApiKey:
    """The key that authenticated this /api/ request (web.auth sets it)."""
    key: ApiKey = g.api_key
    return key


def work_added() -> None:
    """A job was committed, resumed or retried: wake the embedded runner, if any."""
    wake = app_state()["on_enqueue"]
    if wake is not None:
        wake()
