"""The production app plus one no-op route: the ceiling that bench/submit.py compares submits against.

``POST /bench/noop`` runs through the same app (its request hooks, error
handlers and JSON answer) and the same gunicorn configuration as
``POST /v1/jobs``, but does no work of its own: what it answers per second is
what the framework and server can do on this machine. It lives here, never in
``api/``, so the production app has no such route.

    gunicorn -c gunicorn.conf.py 'bench.ceiling_app:create_app()'
"""

from __future__ import annotations

from flask import Flask

import api

__all__ = ["NOOP_PATH", "create_app"]

NOOP_PATH = "/bench/noop"


def create_app() -> Flask:
    app = api.create_app()

    @app.post(NOOP_PATH)
    def noop():
        return {"status": "ok"}, 202

    return app
