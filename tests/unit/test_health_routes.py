"""/healthy and /metrics answer alike on every aiohttp server: handlers called in process, no socket."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from damselfly.lib.serve import add_health_routes
from damselfly.scheduler.app import Scheduler


def _get(app: web.Application, path: str) -> web.Response:
    async def answer() -> web.Response:
        request = make_mocked_request("GET", path, app=app)
        match = await app.router.resolve(request)
        response = await match.handler(request)
        assert isinstance(response, web.Response)
        return response

    return asyncio.run(answer())


def test_healthy_says_ok_and_metrics_are_prometheus_text() -> None:
    registry = CollectorRegistry()
    Counter("damselfly_example", "An example", registry=registry).inc(3)
    app = web.Application()
    add_health_routes(app, registry)
    healthy = _get(app, "/healthy")
    assert healthy.status == 200 and healthy.text == "ok\n"
    metrics = _get(app, "/metrics")
    assert metrics.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert metrics.body is not None and b"damselfly_example_total 3.0" in metrics.body


def test_the_scheduler_serves_its_own_registry() -> None:
    scheduler = Scheduler()
    metrics = _get(scheduler.application(), "/metrics")
    assert metrics.body is not None and b"damselfly_scheduler_hosts" in metrics.body


def test_an_answers_error_is_one_line_whatever_the_server_sent() -> None:
    from damselfly.lib.serve import error_of

    assert error_of('{"error": "no such\\ntask"}') == "no such task"
    assert error_of("400: Bad Request\n\nmalformed") == "400: Bad Request malformed"
    assert error_of('{"error": {"nested": 1}}').startswith('{"error"')
    assert error_of("") == "no body" and len(error_of("x" * 5000)) == 200
