"""The manager's web console: static assets served at ``/``.

A stub until the console lands: the manager's app factory calls ``add_console_routes``
so the console's owner can fill it in without touching the API.
"""

from __future__ import annotations

from aiohttp import web


def add_console_routes(app: web.Application) -> None:
    """Serve ``/`` and the console's assets on ``app`` (nothing yet)."""
