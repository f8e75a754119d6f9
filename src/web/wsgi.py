"""WSGI entry point for gunicorn (`gunicorn -c deploy/gunicorn.conf.py mailjobs.web.wsgi:app`).

The API processes only enqueue and answer; sending is done by `mailjobs worker` processes
(EMBEDDED_RUNNER does not apply here). Set EXPECT_RUNNERS so /healthz reports missing workers.
Migrations are applied by `mailjobs migrate` before the service starts (systemd ExecStartPre).
"""
from __future__ import annotations

from mailjobs.api_server import create_app
from mailjobs.bootstrap import check_production_settings, configure_logging
from mailjobs.settings import load_settings

settings = load_settings()
configure_logging(settings.log_level, settings.log_format)
try:
    check_production_settings(settings)   # a placeholder SECRET_KEY: refuse to serve
except ValueError as exc:
    raise SystemExit(f"mailjobs: {exc}") from None
app = create_app(settings)
