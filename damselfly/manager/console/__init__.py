"""The manager's web console: the built single-page app in ``static/``, served at ``/``.

The console is a client of the JSON API under /api/v1 and nothing else: it signs in, keeps
its session token in the browser's sessionStorage and sends it as ``Authorization: Bearer``.
These routes only hand out files, so they need no session: the sign-in form is in
``index.html`` itself. The TypeScript sources are in ``src/``; ``static/app.js`` is built
from them and committed (see README.md here), so installing the package needs no npm.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSET_PREFIX = "/console/"

# The page loads only its own files and talks only to its own origin; no inline script or
# style, no framing (clickjacking a root user's console), no referrer to anywhere else.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                "object-src 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Small files, revalidated on every load (ETag and Last-Modified make that a 304), so a
    # new version of the package shows at once without renamed assets.
    "Cache-Control": "no-cache",
}
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
          ".png": "image/png", ".ico": "image/x-icon", ".map": "application/json"}


def _assets() -> dict[str, Path]:
    """The files under static/, by name: a fixed list, so no request path reaches a file outside it."""
    if not STATIC_DIR.is_dir():
        return {}
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _TYPES}


def _file(path: Path) -> web.FileResponse:
    headers = dict(SECURITY_HEADERS)
    text = path.suffix in {".html", ".js", ".css"}
    headers["Content-Type"] = _TYPES[path.suffix] + ("; charset=utf-8" if text else "")
    return web.FileResponse(path, headers=headers)


def add_console_routes(app: web.Application) -> None:
    """Serve the console at ``/`` and its assets under ``/console/`` on ``app``."""
    assets = _assets()

    async def index(request: web.Request) -> web.StreamResponse:
        page = assets.get("index.html")
        if page is None:
            raise web.HTTPNotFound(text="the console's assets are not installed", content_type="text/plain")
        return _file(page)

    async def asset(request: web.Request) -> web.StreamResponse:
        path = assets.get(request.match_info["name"])
        if path is None or path.name == "index.html":
            raise web.HTTPNotFound(text="no such console file", content_type="text/plain")
        return _file(path)

    app.router.add_get("/", index)
    app.router.add_get(ASSET_PREFIX + "{name}", asset)
