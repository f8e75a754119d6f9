"""The Flask app: `create_app(settings, dao)` is the factory (flaskr's habit); it puts the
store (the Dao) and the settings on the app, then mounts the blueprints of `web/` and the
features, the request hooks (database deadline, API key) and the one JSON error shape.

`python src/api_server.py` starts the whole service as `mailjobs serve` does.
"""
from __future__ import annotations

if __name__ == "__main__":   # `python src/api_server.py`: stop signals handled before the imports
    from mailjobs import entry

    entry.install()

from collections.abc import Callable

from flask import Flask

from mailjobs import metrics
from mailjobs.attachments import routes as attachments
from mailjobs.dao_mysql import Dao
from mailjobs.dashboard import pages as dashboard
from mailjobs.db import guard as db_guard
from mailjobs.deliverability import unsubscribe
from mailjobs.settings import Settings, load_settings
from mailjobs.web import auth, errors, jobs, operators, send, suppressions, templates_api
from mailjobs.web.state import get_settings, init_app
from mailjobs.webhooks import routes as webhooks

# the API's own (in /openapi.json), then the dashboard's HTML pages and recipients' /u/ pages
BLUEPRINTS = (send.bp, jobs.bp, templates_api.bp, suppressions.bp, webhooks.bp, attachments.bp,
              operators.bp, dashboard.bp, unsubscribe.bp)


def _start_deadline() -> None:
    """Every request's database work ends within DB_REQUEST_DEADLINE (registered first, so
    the API key lookup is inside it too)."""
    db_guard.start_deadline(get_settings().db_request_deadline)


def _end_deadline(exc: BaseException | None) -> None:
    db_guard.end_deadline()


def create_app(settings: Settings | None = None, dao: Dao | None = None,
               runs_runner: bool = False, on_enqueue: Callable[[], None] | None = None) -> Flask:
    """The app. `runs_runner`: this process runs an embedded JobRunner, so /healthz
    requires a live one. `on_enqueue`: called after a job is committed, resumed or retried
    (the embedded runner's wake(), so it does not wait for its next poll)."""
    settings = settings or load_settings()
    dao = dao or Dao(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    init_app(app, settings, dao, runs_runner, on_enqueue)
    metrics.configure(settings.metrics_sender_labels)
    app.before_request(_start_deadline)
    app.teardown_request(_end_deadline)
    app.before_request(auth.authenticate)
    errors.register(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app


if __name__ == "__main__":
    from mailjobs.entry import main

    main(["serve"])
