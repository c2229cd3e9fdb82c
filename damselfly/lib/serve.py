"""Run several aiohttp applications in one process until SIGINT or SIGTERM; read their JSON bodies;
answer /healthy and /metrics the same way on each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import signal
import ssl
from typing import Any, Awaitable, Callable, NamedTuple

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from damselfly.lib.health import HEALTHY_PATH, HEALTHY_TEXT, METRICS_PATH

log = logging.getLogger(__name__)
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf'
# On SIGTERM aiohttp gives a request still in progress this long to finish, then, for a
# handler that does not end when its request is cancelled (one blocked sending to a client
# that reads nothing), as long again before it cancels the handler: 5 s at most in all.
SHUTDOWN_GRACE = 2.5
# API bodies are a few hundred bytes: a client that takes longer than this to send one has
# stalled, and aiohttp alone would wait on it for as long as the connection stays open.
BODY_TIMEOUT = 10.0


# A TLS handshake that has not finished by then is dropped (asyncio's default is 60 s): a
# host that opens connections and never speaks would otherwise hold a descriptor each,
# and a review exhausted a node's 1024 that way, its mirror port too, before any
# certificate was asked for.
HANDSHAKE_TIMEOUT = 10.0


async def _listen(site: web.BaseSite, **where: Any) -> None:
    """Start ``site`` as aiohttp would, where ``where`` says (host and port, or a socket),
    with a deadline for the TLS handshake (aiohttp offers no such option)."""
    await web.BaseSite.start(site)
    server = site._runner.server
    assert server is not None
    tls = site._ssl_context
    site._server = await asyncio.get_running_loop().create_server(
        server, ssl=tls, backlog=site._backlog, ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None, **where)


class _TLSSite(web.TCPSite):
    """aiohttp's TCPSite with the TLS handshake deadline."""

    async def start(self) -> None:
        await _listen(self, host=self._host, port=self._port, reuse_address=self._reuse_address,
                      reuse_port=self._reuse_port)


class SocketSite(web.SockSite):
    """aiohttp's SockSite (serving a socket bound beforehand) with the same TLS handshake
    deadline as every other port of a node, when it serves TLS."""

    async def start(self) -> None:
        await _listen(self, sock=self._sock)


def _raise_open_files_limit() -> None:
    """Take the hard limit of open files: every connection, piece transfer and cached blob
    a reader holds is a descriptor, and 1024 (a common soft default) runs out under load."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Site(NamedTuple):
    """One listening application; with ``tls``, HTTPS that admits only cluster members."""

    app: web.Application
    host: str
    port: int
    tls: ssl.SSLContext | None = None


async def json_object(request: web.Request, timeout: float = BODY_TIMEOUT) -> dict[str, Any]:
    """The request's JSON object body: 400 if it is not one, 408 if it does not arrive within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            body = await request.json()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {timeout:g}s") from None
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


def error_of(body: str) -> str:
    """What an answer of one of these servers says went wrong: its ``{"error": ...}``, else
    the start of whatever it sent (an aiohttp text refusal, a proxy's page), as one line."""
    with contextlib.suppress(ValueError):
        document = json.loads(body)
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            return " ".join(str(document["error"]).split())
    return " ".join(body[:200].split()) or "no body"


def add_health_routes(app: web.Application, registry: CollectorRegistry) -> None:
    """GET /healthy (200 ``ok``: the process serves) and GET /metrics (``registry`` in the
    Prometheus text format), answered alike by every server whatever else it routes."""

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text=HEALTHY_TEXT)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get(HEALTHY_PATH, healthy)
    app.router.add_get(METRICS_PATH, metrics)


async def _serve(sites: list[Site], on_started: Callable[[], Awaitable[None]] | None,
                 on_stopping: Callable[[], Awaitable[None]] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners = []
    try:
        for site in sites:
            runner = web.AppRunner(site.app, access_log_format=ACCESS_LOG_FORMAT, shutdown_timeout=SHUTDOWN_GRACE)
            await runner.setup()
            runners.append(runner)
            kind = _TLSSite if site.tls else web.TCPSite
            await kind(runner, site.host, site.port, ssl_context=site.tls).start()
        if on_started is not None:
            await on_started()
        await stop.wait()
        log.info("stopping")
    finally:
        if on_stopping is not None:
            await on_stopping()
        for runner in reversed(runners):
            await runner.cleanup()


def serve(sites: list[Site], on_started: Callable[[], Awaitable[None]] | None = None,
          on_stopping: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve every site until a signal; raises OSError if a port is taken."""
    _raise_open_files_limit()
    asyncio.run(_serve(sites, on_started, on_stopping))
