"""The console's routes hand out its built files and nothing else (aiohttp's test server on loopback).

The browser's view of them is tests/integration/test_console.py.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from damselfly.manager.console import STATIC_DIR, add_console_routes


def _get(path: str) -> tuple[int, dict[str, str], bytes]:
    app = web.Application()
    add_console_routes(app)

    async def answer() -> tuple[int, dict[str, str], bytes]:
        async with TestClient(TestServer(app)) as client:
            response = await client.get(path)
            return response.status, dict(response.headers), await response.read()

    return asyncio.run(answer())


def test_the_page_carries_the_sign_in_form_and_a_strict_policy() -> None:
    status, headers, body = _get("/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'type="password"' in body  # before any script runs
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_every_file_the_page_names_is_in_the_package_and_served() -> None:
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    named = set(re.findall(r'(?:src|href)="(console/[^"]+)"', page))
    assert {"console/app.js", "console/style.css"} <= named
    for name in named:
        status, headers, body = _get("/" + name)
        assert status == 200 and body, name
    assert _get("/console/app.js")[1]["Content-Type"] == "text/javascript; charset=utf-8"
    assert not re.search(rb"https?://(?!127\.0\.0\.1)", _get("/console/app.js")[2]), "no asset from the internet"


@pytest.mark.parametrize("path", ["/console/index.html", "/console/nothing.js", "/console/..%2f__init__.py",
                                  "/console/%2e%2e%2f%2e%2e%2fapi.py"])
def test_nothing_else_is_served(path: str) -> None:
    assert _get(path)[0] == 404
