"""The operator web console: one static page over the REST API (no build step, no framework).

The page asks for an API token once (kept in the browser's session storage),
then lists issues highest priority first, shows one issue whole (diagnosis,
recommended action, revenue lost, related units, recovery attempts, evidence),
lets an operator acknowledge or resolve it, and asks questions through
``POST /api/v1/ask``. Everything it shows comes from the same endpoints
scripts use; it holds no state of its own.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse


def console_html() -> str:
    return resources.files("chargesight.cloud").joinpath("static/console.html").read_text("utf-8")


def mount_console(app: FastAPI) -> None:
    """Serve the console at ``/console`` (and redirect ``/`` to it)."""
    page = console_html()

    @app.get("/", include_in_schema=False)
    async def _root() -> RedirectResponse:
        return RedirectResponse("/console")

    @app.get("/console", include_in_schema=False)
    async def _console() -> HTMLResponse:
        return HTMLResponse(page)
