"""The scheduler's HTTP API (JSON), around SchedulerState."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from damselfly.lib.serve import json_object
from damselfly.lib.waiting import wait_until_set
from damselfly.scheduler.state import KEEPALIVE_INTERVAL, Host, SchedulerState, Task

log = logging.getLogger(__name__)
LONG_POLL_SECONDS = 5.0
SEED_TRIGGER_TIMEOUT = 2.0  # per seed: a healthy one answers at once (202); the download comes after
SEED_TRIGGER_BUDGET = 4.0  # for every seed of one trigger: under the 5 s a peer waits for its schedule


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.hosts = Gauge("damselfly_scheduler_hosts", "Live hosts", ["kind"], registry=r)
        self.tasks = Gauge("damselfly_scheduler_tasks", "Tasks known", registry=r)
        self.schedules = Counter("damselfly_scheduler_schedules", "Answers given to peers", ["action"], registry=r)
        self.seed_triggers = Counter("damselfly_scheduler_seed_triggers", "Seed peers told to fetch a task",
                                     ["result"], registry=r)
        self.bad_parents = Counter("damselfly_scheduler_bad_parent_reports", "Parents reported bad by peers",
                                   registry=r)
        self.rejected_pieces = Counter("damselfly_scheduler_rejected_pieces", "Piece reports whose digest disagreed",
                                       registry=r)
        self.latency = Histogram("damselfly_scheduler_schedule_seconds", "Time to compute a schedule", registry=r,
                                 buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5))


class Scheduler:
    def __init__(self) -> None:
        self.state = SchedulerState()
        self.metrics = SchedulerMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._triggering: dict[str, asyncio.Task[bool]] = {}
        self.metrics.hosts.labels("seed").set_function(lambda: len(self.state.seeds()))
        self.metrics.hosts.labels("all").set_function(lambda: len(self.state.hosts))
        self.metrics.tasks.set_function(lambda: len(self.state.tasks))

    def application(self) -> web.Application:
        app = web.Application(middlewares=[_json_errors])
        app.router.add_get("/healthy", lambda _: web.Response(text="ok\n"))
        app.router.add_get("/metrics", self.metrics_handler)
        app.router.add_post("/api/v1/hosts", self.announce)
        app.router.add_delete("/api/v1/hosts/{host_id}", self.leave)
        app.router.add_post("/api/v1/tasks/{task_id}/register", self.register)
        app.router.add_get("/api/v1/tasks/{task_id}/schedule", self.poll)
        app.router.add_post("/api/v1/tasks/{task_id}/pieces", self.pieces)
        app.router.add_post("/api/v1/tasks/{task_id}/bad-parent", self.bad_parent)
        app.router.add_post("/api/v1/tasks/{task_id}/done", self.done)
        app.cleanup_ctx.append(self._lifecycle)
        return app

    async def _lifecycle(self, _: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SEED_TRIGGER_TIMEOUT))
        expiry = asyncio.create_task(self._expire_hosts())
        yield
        expiry.cancel()
        for trigger in self._triggering.values():
            trigger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry
        await self._session.close()

    async def _expire_hosts(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            for host_id in self.state.expire_hosts():
                log.warning("host %s missed its keepalives: removed with its peers", host_id)

    async def metrics_handler(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain", charset="utf-8")

    # -- hosts ---------------------------------------------------------------------

    async def announce(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        host = Host(id=_str(body, "id"), upload_url=_str(body, "upload_url"), idc=str(body.get("idc", "")),
                    location=str(body.get("location", "")), is_seed=bool(body.get("seed", False)),
                    upload_slots=int(body.get("upload_slots", 16)))
        if host.id not in self.state.hosts:
            log.info("host %s joined (%s%s)", host.id, host.upload_url, ", seed" if host.is_seed else "")
        self.state.announce(host)
        return web.json_response({"keepalive_interval": KEEPALIVE_INTERVAL})

    async def leave(self, request: web.Request) -> web.Response:
        self.state.leave(request.match_info["host_id"])
        return web.json_response({})

    # -- tasks ---------------------------------------------------------------------

    def _task(self, request: web.Request) -> Task:
        task_id = request.match_info["task_id"]
        task = self.state.tasks.get(task_id)
        if task is None:
            raise web.HTTPNotFound(text=f"unknown task {task_id}: register first")
        return task

    async def register(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        host_id = _str(body, "host_id")
        length, piece_length = int(body["length"]), int(body["piece_length"])
        if length < 0 or piece_length <= 0:
            raise web.HTTPBadRequest(text="length and piece_length must be positive")
        task = self.state.task(request.match_info["task_id"], length, piece_length, dict(body.get("origin") or {}),
                               ranged=bool(body.get("ranged")))
        self.state.join(task, host_id, [int(i) for i in body.get("pieces", [])], seeding=bool(body.get("seeding")))
        return web.json_response(await self._schedule(task, host_id))

    async def poll(self, request: web.Request) -> web.Response:
        """Long poll: answer when the task changed since ``since``, or after a few seconds."""
        task = self._task(request)
        host_id = request.query.get("host_id", "")
        if host_id not in task.peers:
            raise web.HTTPNotFound(text=f"host {host_id} is not a peer of task {task.id}: register first")
        try:
            since = int(request.query.get("since", "-1"))
        except ValueError:
            raise web.HTTPBadRequest(text="since must be a task version (an integer)") from None
        if request.query.get("epoch") != self.state.epoch:
            since = -1  # a version from another scheduler, or an earlier run of this one, says nothing here
        if task.version <= since:
            await wait_until_set(task.changed, LONG_POLL_SECONDS)
        return web.json_response(await self._schedule(task, host_id, since))

    async def pieces(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        task = self._task(request)
        host_id = _str(body, "host_id")
        host = self.state.hosts.get(host_id)
        # Digests are taken from hosts that read the origin: seed peers, or peers sent back to source.
        trusted = bool(body.get("from_origin")) and host is not None
        reports = [(int(p[0]), p[1], p[2], p[3]) for p in body.get("pieces", [])]
        rejected = self.state.report_pieces(task, host_id, reports, trusted)
        if rejected:
            self.metrics.rejected_pieces.inc(len(rejected))
            log.warning("host %s reported pieces %s of %s with digests that disagree", host_id, rejected, task.id)
        return web.json_response({"rejected": rejected})

    async def bad_parent(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        task = self._task(request)
        if "parent_id" in body:
            parent_id = _str(body, "parent_id")
        else:  # a peer a seed pointed at, known to the reporter by its upload URL only
            url = _str(body, "parent_url")
            found = self.state.host_at(url)
            if found is None:
                raise web.HTTPNotFound(text=f"no host uploads at {url}")
            parent_id = found
        self.state.report_bad_parent(task, _str(body, "host_id"), parent_id)
        self.metrics.bad_parents.inc()
        log.warning("peer %s reported parent %s for %s: %s", body.get("host_id"), parent_id, task.id,
                    body.get("reason", ""))
        return web.json_response({})

    async def done(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        task = self._task(request)
        self.state.finish(task, _str(body, "host_id"), bool(body.get("success")), str(body.get("reason", "")),
                          could_not_start=bool(body.get("could_not_start")))
        return web.json_response({})

    # -- scheduling ----------------------------------------------------------------

    async def _schedule(self, task: Task, host_id: str, since: int = -1) -> dict[str, Any]:
        started = time.perf_counter()
        answer = self.state.schedule(task, host_id, since)
        if answer["action"] == "seed":
            if await self._trigger_seed(task, exclude=host_id):
                answer = self.state.schedule(task, host_id, since)
            else:
                answer.update(action="back_to_source", reason="no seed peer could take the task")
        self.metrics.latency.observe(time.perf_counter() - started)
        self.metrics.schedules.labels(answer["action"]).inc()
        return answer

    async def _trigger_seed(self, task: Task, exclude: str) -> bool:
        """Ask one live seed peer to fetch the task from the origin (one attempt at a time per task)."""
        running = self._triggering.get(task.id)
        if running is None:
            running = asyncio.create_task(self._ask_seeds(task, exclude))
            self._triggering[task.id] = running
            running.add_done_callback(lambda _: self._triggering.pop(task.id, None))
        return await asyncio.shield(running)

    async def _ask_seeds(self, task: Task, exclude: str) -> bool:
        """Seeds in order of their load, those that failed a trigger lately last, all within
        a budget shorter than a peer's wait: one unreachable seed (a firewall that drops,
        a wrong advertised address) must not make every peer think its scheduler is down."""
        asking = None
        try:
            async with asyncio.timeout(SEED_TRIGGER_BUDGET):
                for seed in self.state.seeds_to_ask(task, exclude):
                    asking = seed.id
                    if await self._ask_seed(seed, task):
                        return True
        except TimeoutError:
            if asking is not None:
                self.state.trigger_failed(asking)
            log.warning("no seed peer took %s within %.0fs", task.id, SEED_TRIGGER_BUDGET)
        return False

    async def _ask_seed(self, seed: Host, task: Task) -> bool:
        assert self._session is not None
        try:
            async with self._session.post(f"{seed.upload_url}/api/v1/seed/{task.id}", json={
                    "length": task.length, "piece_length": task.piece_length, "origin": task.origin,
                    "ranged": task.ranged}) as response:
                if response.status == 202:
                    if self.state.seed_failed_lately(task, seed.id):  # it already said it could not start
                        return False
                    self.state.join(task, seed.id, [], seeding=True)
                    self.metrics.seed_triggers.labels("accepted").inc()
                    log.info("seed peer %s fetches %s from the origin", seed.id, task.id)
                    return True
                reason = f"answered {response.status}: {(await response.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"unreachable: {exc or exc.__class__.__name__}"
        self.state.trigger_failed(seed.id)
        self.metrics.seed_triggers.labels("failed").inc()
        log.warning("seed peer %s could not take %s: %s", seed.id, task.id, reason)
        return False


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.text or exc.reason}, status=exc.status)
    except (KeyError, ValueError, TypeError) as exc:
        return web.json_response({"error": f"malformed request: {exc}"}, status=400)


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise web.HTTPBadRequest(text=f"missing string field {key!r}")
    return value
