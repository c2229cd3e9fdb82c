"""A port served from a socket bound beforehand (the embedded manager's) drops a TLS
connection that never says hello, as every other TLS port of a node does, and still
serves members and plain HTTP."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest
from aiohttp import web

from damselfly.lib import serve
from damselfly.lib.tls import ClusterTLS
from testkit.tls import harness_context, tls_dir


async def _hello(_: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _serving(context: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await serve.SocketSite(runner, sock, ssl_context=context).start()
    return runner, sock.getsockname()[1]


async def _silent_connection_closed(port: int, within: float) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(within):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True
    finally:
        writer.close()


def test_a_silent_tls_connection_is_dropped_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "HANDSHAKE_TIMEOUT", 0.5)
    context = ClusterTLS.load(tls_dir("socket-site", "scheduler")).server_context()

    async def scenario() -> tuple[bool, float, str]:
        runner, port = await _serving(context)
        try:
            started = time.monotonic()
            closed = await _silent_connection_closed(port, within=5)
            took = time.monotonic() - started
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=harness_context(),
                                                           server_hostname="scheduler.role.damselfly")
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = (await reader.read()).decode()
            writer.close()
            return closed, took, answer
        finally:
            await runner.cleanup()

    closed, took, answer = asyncio.run(scenario())
    assert closed and took < 4, f"a connection that never said hello was kept {took:.1f}s"
    assert answer.startswith("HTTP/1.1 200") and answer.endswith("hello")


def test_plain_http_from_a_socket_is_served() -> None:
    async def scenario() -> str:
        runner, port = await _serving(None)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = (await reader.read()).decode()
            writer.close()
            return answer
        finally:
            await runner.cleanup()

    assert asyncio.run(scenario()).endswith("hello")
