"""Run several aiohttp applications in one process until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf'


async def _serve(sites: list[tuple[web.Application, str, int]], on_started: Callable[[], Awaitable[None]] | None,
                 on_stopping: Callable[[], Awaitable[None]] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners = []
    try:
        for app, host, port in sites:
            runner = web.AppRunner(app, access_log_format=ACCESS_LOG_FORMAT, shutdown_timeout=5)
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, host, port).start()
        if on_started is not None:
            await on_started()
        await stop.wait()
        log.info("stopping")
    finally:
        if on_stopping is not None:
            await on_stopping()
        for runner in reversed(runners):
            await runner.cleanup()


def serve(sites: list[tuple[web.Application, str, int]], on_started: Callable[[], Awaitable[None]] | None = None,
          on_stopping: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve every (app, host, port) until a signal; raises OSError if a port is taken."""
    asyncio.run(_serve(sites, on_started, on_stopping))
