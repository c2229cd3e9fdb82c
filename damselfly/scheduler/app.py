"""The scheduler's HTTP API (JSON, parsed and built with damselfly.core.wire), around SchedulerState.

With a cluster identity (mutual TLS) a caller speaks only for itself: the host id of every
announce, report, poll or leave must be its certificate's name, only seed certificates may
announce a seed, and only peers and seeds may take part at all. On plain HTTP (loopback
deployments) callers are trusted as they were.

The scheduler never asks seeds to fetch anything and never sees a caller's credentials:
a peer that gets the trigger lease asks the seeds itself (see damselfly.core.wire.Schedule).

With Redis, which hosts hold which blobs outlives the process (damselfly.scheduler.holdings):
a register or the manager's task search for a task not held here reads it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.asyncio import Redis

from damselfly.core.dynconfig import ClusterConfig
from damselfly.lib.serve import add_health_routes, json_object
from damselfly.lib.tls import request_identity
from damselfly.lib.waiting import wait_until_set
from damselfly.core.pieces import piece_length_for
from damselfly.lib.kv import MemoryKV, RedisKV
from damselfly.scheduler.holdings import Holdings
from damselfly.scheduler.tags import MAX_RECORDS, TagBook
from damselfly.scheduler.state import (
    KEEPALIVE_INTERVAL,
    Host,
    SchedulerState,
    Task,
    TaskConflict,
    TooManyHosts,
    TooManyTasks,
)
from damselfly.settings import SchedulerSettings
from damselfly.core.wire import (
    AnnounceAnswer,
    BadParentReport,
    DoneReport,
    HostAnnounce,
    PieceAnswer,
    PieceReport,
    TaskRegister,
    TriggerFailed,
    WireError,
    parse_number,
    parse_task_id,
)

log = logging.getLogger(__name__)
LONG_POLL_SECONDS = 5.0
MEMBER_ROLES = ("peer", "seed")  # the roles that take part in tasks
RETRY_AFTER = "30"

Message = TypeVar("Message", HostAnnounce, TaskRegister, PieceReport, BadParentReport, TriggerFailed, DoneReport)


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.hosts = Gauge("damselfly_scheduler_hosts", "Live hosts", ["kind"], registry=r)
        self.tasks = Gauge("damselfly_scheduler_tasks", "Tasks known", registry=r)
        self.schedules = Counter("damselfly_scheduler_schedules", "Answers given to peers", ["action"], registry=r)
        self.seed_triggers = Counter("damselfly_scheduler_seed_triggers",
                                     "Trigger leases given (leased), seeds that took a task (accepted) or did not "
                                     "(failed, as peers report)", ["result"], registry=r)
        self.bad_parents = Counter("damselfly_scheduler_bad_parent_reports", "Parents reported bad by peers",
                                   registry=r)
        self.rejected_pieces = Counter("damselfly_scheduler_rejected_pieces", "Piece reports whose digest disagreed",
                                       registry=r)
        self.digest_mismatches = Counter("damselfly_scheduler_digest_mismatches",
                                         "Blobs assembled from the scheduler's piece digests that failed their "
                                         "whole-blob check", registry=r)
        self.excluded_sources = Counter("damselfly_scheduler_excluded_sources",
                                        "Digest sources excluded from a task for everyone", registry=r)
        self.refused = Counter("damselfly_scheduler_refused", "Requests refused", ["reason"], registry=r)
        self.latency = Histogram("damselfly_scheduler_schedule_seconds", "Time to compute a schedule", registry=r,
                                 buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5))
        # With Redis (--redis): see damselfly.scheduler.holdings.
        self.holdings_restores = Counter("damselfly_scheduler_holdings_restores",
                                         "Tasks not held here looked up in Redis at a register: restored, absent "
                                         "there, or unavailable (Redis down or slow)", ["result"], registry=r)
        self.holdings_write_failures = Counter("damselfly_scheduler_holdings_write_failures",
                                               "Writes to Redis that failed (written anew once it answers)",
                                               registry=r)
        self.holdings_catch_ups = Counter("damselfly_scheduler_holdings_catch_ups",
                                          "Times everything held here was written to Redis anew (first contact, "
                                          "after an outage, or after Redis lost its data)", registry=r)
        self.holdings_pending = Gauge("damselfly_scheduler_holdings_pending", "Changes not yet written to Redis",
                                      registry=r)
        self.holdings_behind = Gauge("damselfly_scheduler_holdings_behind",
                                     "1 while Redis misses writes: everything is written anew once it answers",
                                     registry=r)


class Scheduler:
    def __init__(self, settings: SchedulerSettings = SchedulerSettings(),
                 clock: Callable[[], float] = time.monotonic, kv: Redis | None = None) -> None:
        self.kv = kv  # Redis shared with the cluster's other schedulers and the manager (None: this process only)
        self.max_length = settings.max_task_length
        self.state = SchedulerState(clock=clock, max_hosts=settings.max_hosts, max_tasks=settings.max_tasks,
                                    track_changes=kv is not None)
        self.metrics = SchedulerMetrics()
        self.holdings = Holdings(kv, self.state, self.metrics) if kv is not None else None
        self.metrics.hosts.labels("seed").set_function(lambda: len(self.state.seeds()))
        self.metrics.hosts.labels("all").set_function(lambda: len(self.state.hosts))
        self.metrics.tasks.set_function(lambda: self.state.task_count)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        add_health_routes(app, self.metrics.registry)
        app.router.add_post("/api/v1/hosts", self.announce)
        app.router.add_delete("/api/v1/hosts/{host_id}", self.leave)
        app.router.add_post("/api/v1/tasks/{task_id}/register", self.register)
        app.router.add_get("/api/v1/tasks/{task_id}/schedule", self.poll)
        app.router.add_post("/api/v1/tasks/{task_id}/pieces", self.pieces)
        app.router.add_post("/api/v1/tasks/{task_id}/bad-parent", self.bad_parent)
        app.router.add_post("/api/v1/tasks/{task_id}/trigger-failed", self.trigger_failed)
        app.router.add_post("/api/v1/tasks/{task_id}/done", self.done)
        app.router.add_get("/api/v1/tasks/{task_id}/peers", self.task_peers)
        TagBook(self.state, RedisKV(self.kv) if self.kv is not None else MemoryKV(max_values=MAX_RECORDS)).add_routes(app)
        app.cleanup_ctx.append(self._lifecycle)
        return app

    async def _lifecycle(self, _: web.Application) -> AsyncIterator[None]:
        expiry = asyncio.create_task(self._expire())
        if self.holdings is not None:
            self.holdings.start()
        yield
        expiry.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await expiry
        if self.holdings is not None:
            await self.holdings.close()

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            for host_id in self.state.expire_hosts():
                log.warning("host %s missed its keepalives: removed with its peers", host_id)
            if gone := self.state.expire_tasks():
                log.info("forgot %d tasks nobody held any more", len(gone))

    # -- the cluster's configuration -----------------------------------------------

    def apply_config(self, config: ClusterConfig) -> None:
        """The cluster's candidate_parent_limit and back_to_source, from the manager: the
        next schedule uses them (parents already handed out stay until the peer's next poll)."""
        state = self.state
        if (state.parents_per_peer, state.back_to_source_limit) != (config.candidate_parent_limit,
                                                                    config.back_to_source):
            log.info("cluster configuration: %d candidate parents per peer, %s peers of a task may read the origin",
                     config.candidate_parent_limit,
                     "any number of" if config.back_to_source is None else config.back_to_source)
        state.parents_per_peer = config.candidate_parent_limit
        state.back_to_source_limit = config.back_to_source

    # -- who is asking -------------------------------------------------------------

    @staticmethod
    async def _message(request: web.Request, kind: type[Message]) -> Message:
        try:
            return kind.from_json(await json_object(request))
        except WireError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    @staticmethod
    def _speaks_for(request: web.Request, host_id: str) -> None:
        """403 unless the caller's certificate names ``host_id`` and lets it take part (with TLS)."""
        identity = request_identity(request)
        if identity is None:
            return
        if not any(identity.has_role(role) for role in MEMBER_ROLES):
            raise web.HTTPForbidden(text=f"{identity.name} ({identity.role}) is not a peer or a seed")
        if host_id != identity.name:
            raise web.HTTPForbidden(text=f"{identity.name} may not speak for host {host_id}")

    @staticmethod
    def _manager_only(request: web.Request) -> None:
        """With a cluster identity, only the manager asks where blobs are: peers and seeds
        need not learn which hosts hold what."""
        identity = request_identity(request)
        if identity is not None and not identity.has_role("manager"):
            raise web.HTTPForbidden(text=f"{identity.name} ({identity.role}) is not the manager")

    # -- hosts ---------------------------------------------------------------------

    async def announce(self, request: web.Request) -> web.Response:
        message = await self._message(request, HostAnnounce)
        self._speaks_for(request, message.id)
        identity = request_identity(request)
        if message.seed and identity is not None and not identity.has_role("seed"):
            raise web.HTTPForbidden(text=f"{identity.name} has no seed certificate: it may not announce a seed")
        if message.id not in self.state.hosts:
            log.info("host %s joined (%s%s)", message.id, message.upload_url, ", seed" if message.seed else "")
        self.state.announce(Host(id=message.id, upload_url=message.upload_url, idc=message.idc,
                                 location=message.location, is_seed=message.seed, upload_slots=message.upload_slots))
        return web.json_response(AnnounceAnswer(KEEPALIVE_INTERVAL).to_json())

    async def leave(self, request: web.Request) -> web.Response:
        host_id = request.match_info["host_id"]
        self._speaks_for(request, host_id)
        self.state.leave(host_id)
        return web.json_response({})

    # -- tasks ---------------------------------------------------------------------

    @staticmethod
    def _task_id(request: web.Request) -> str:
        try:
            return parse_task_id(request.match_info["task_id"])
        except WireError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    def _tasks(self, request: web.Request, host_id: str) -> list[Task]:
        """The tasks of the path's digest that ``host_id``'s call is about (see SchedulerState.find)."""
        task_id = self._task_id(request)
        tasks = self.state.find(task_id, host_id)
        if not tasks:
            raise web.HTTPNotFound(text=f"unknown task {task_id}: register first")
        return tasks

    def _task(self, request: web.Request, host_id: str) -> Task:
        """The one task ``host_id`` registered for the path's digest (one of several lengths:
        it must register to say which)."""
        tasks = self._tasks(request, host_id)
        if len(tasks) > 1:
            raise web.HTTPNotFound(text=f"host {host_id} is not a peer of task {tasks[0].id}: register first")
        return tasks[0]

    async def register(self, request: web.Request) -> web.Response:
        task_id = self._task_id(request)
        message = await self._message(request, TaskRegister)
        self._speaks_for(request, message.host_id)
        if message.length > self.max_length:
            raise web.HTTPRequestEntityTooLarge(self.max_length, message.length,
                                                text=f"task length {message.length} is over this scheduler's "
                                                     f"limit of {self.max_length} bytes")
        expected = piece_length_for(message.length)
        if message.piece_length != expected:
            raise web.HTTPBadRequest(text=f"piece_length of a {message.length}-byte task must be {expected}, "
                                          f"not {message.piece_length}")
        if self.holdings is not None and message.length not in self.state.tasks.get(task_id, {}):
            await self.holdings.restore(task_id, message.length)
        task = self.state.task(task_id, message.length, message.piece_length, ranged=message.ranged)
        host = self.state.hosts.get(message.host_id)
        if message.seeding and host is not None and host.is_seed and message.host_id not in task.peers:
            self.metrics.seed_triggers.labels("accepted").inc()
            log.info("seed peer %s fetches %s from the origin", message.host_id, task_id)
        self.state.join(task, message.host_id, message.pieces, seeding=message.seeding)
        return self._schedule(task, message.host_id)

    async def poll(self, request: web.Request) -> web.Response:
        """Long poll: answer when the task changed since ``since``, or after a few seconds."""
        host_id = request.query.get("host_id", "")
        self._speaks_for(request, host_id)
        task = self._task(request, host_id)
        if host_id not in task.peers:
            raise web.HTTPNotFound(text=f"host {host_id} is not a peer of task {task.id}: register first")
        try:
            since = parse_number(request.query.get("since", "-1"))
        except ValueError:
            raise web.HTTPBadRequest(text="since must be a task version (an integer)") from None
        if request.query.get("epoch") != self.state.epoch:
            since = -1  # a version from another scheduler, or an earlier run of this one, says nothing here
        if task.version <= since:
            await wait_until_set(task.changed, LONG_POLL_SECONDS)
        if host_id not in task.peers:  # it left, or failed, while the poll waited
            raise web.HTTPNotFound(text=f"host {host_id} is not a peer of task {task.id}: register first")
        return self._schedule(task, host_id, since)

    async def pieces(self, request: web.Request) -> web.Response:
        message = await self._message(request, PieceReport)
        self._speaks_for(request, message.host_id)
        task = self._task(request, message.host_id)
        host = self.state.hosts.get(message.host_id)
        # Digests are taken only from seeds that read the origin (with TLS, a seed certificate).
        trusted = message.from_origin and host is not None and host.is_seed
        known = task.known
        rejected = self.state.report_pieces(task, message.host_id, message.pieces, trusted)
        if self.holdings is not None and task.known != known:
            # The seed serves these pieces once answered: their digests must outlive this process.
            await self.holdings.saved()
        if rejected:
            self.metrics.rejected_pieces.inc(len(rejected))
            log.warning("host %s reported %d pieces of %s with digests that disagree (first %s)", message.host_id,
                        len(rejected), task.id, rejected[:8])
        return web.json_response(PieceAnswer(tuple(rejected)).to_json())

    async def bad_parent(self, request: web.Request) -> web.Response:
        message = await self._message(request, BadParentReport)
        self._speaks_for(request, message.host_id)
        task = self._task(request, message.host_id)
        parent_id = message.parent_id
        if parent_id is None:  # a peer a seed pointed at, known to the reporter by its upload URL only
            assert message.parent_url is not None  # the wire requires one of them
            parent_id = self.state.host_at(message.parent_url)
            if parent_id is None:
                raise web.HTTPNotFound(text=f"no host uploads at {message.parent_url}")
        self.state.report_bad_parent(task, message.host_id, parent_id)
        self.metrics.bad_parents.inc()
        log.warning("peer %s reported parent %s for %s: %s", message.host_id, parent_id, task.id, message.reason)
        return web.json_response({})

    async def trigger_failed(self, request: web.Request) -> web.Response:
        message = await self._message(request, TriggerFailed)
        self._speaks_for(request, message.host_id)
        task = self._task(request, message.host_id)
        if message.host_id not in task.peers:
            raise web.HTTPNotFound(text=f"host {message.host_id} is not a peer of task {task.id}: register first")
        self.state.trigger_failed(message.seed_id)
        self.metrics.seed_triggers.labels("failed").inc()
        log.warning("seed peer %s did not take %s for %s: %s", message.seed_id, task.id, message.host_id,
                    message.reason)
        return web.json_response({})

    async def done(self, request: web.Request) -> web.Response:
        message = await self._message(request, DoneReport)
        self._speaks_for(request, message.host_id)
        # A host that never registered (a seed that could not start) speaks of the digest: every length.
        tasks = self._tasks(request, message.host_id)
        excluded = [source for task in tasks
                    for source in self.state.finish(task, message.host_id, message.success, message.reason,
                                                    could_not_start=message.could_not_start,
                                                    digest_mismatch=message.digest_mismatch)]
        task_id = tasks[0].id
        if message.digest_mismatch and not message.success:
            self.metrics.digest_mismatches.inc()
            log.warning("host %s assembled %s from the known piece digests and its digest did not match: %s",
                        message.host_id, task_id, message.reason)
        for source in excluded:
            self.metrics.excluded_sources.inc()
            log.error("two hosts found the piece digests of %s for %s wrong: excluded from it for everyone",
                      source or "the record restored from Redis", task_id)
        return web.json_response({})

    async def task_peers(self, request: web.Request) -> web.Response:
        """The manager's task search: which peers hold a blob and how far each got
        (404 when this scheduler has no task of it)."""
        self._manager_only(request)
        task_id = self._task_id(request)
        holders = self.state.holders(task_id)
        if not holders and task_id not in self.state.tasks and self.holdings is not None:
            holders = await self.holdings.holders(task_id)  # read only: the manager's question loads nothing here
        if not holders and task_id not in self.state.tasks:
            raise web.HTTPNotFound(text=f"no task {task_id} here")
        return web.json_response([holder._asdict() for holder in holders])

    # -- scheduling ----------------------------------------------------------------

    def _schedule(self, task: Task, host_id: str, since: int = -1) -> web.Response:
        started = time.perf_counter()
        answer = self.state.schedule(task, host_id, since)
        self.metrics.latency.observe(time.perf_counter() - started)
        self.metrics.schedules.labels(answer.action).inc()
        if answer.action == "seed":
            self.metrics.seed_triggers.labels("leased").inc()
        return web.json_response(answer.to_json())

    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        """Errors as {"error": one line}; the state's refusals as 409 and 429."""
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return web.json_response({"error": exc.text or exc.reason}, status=exc.status)
        except TaskConflict as exc:
            self.metrics.refused.labels("conflict").inc()
            return web.json_response({"error": str(exc)}, status=409)
        except (TooManyHosts, TooManyTasks) as exc:
            self.metrics.refused.labels("full").inc()
            return web.json_response({"error": f"{exc}: try another scheduler, or later"}, status=429,
                                     headers={"Retry-After": RETRY_AFTER})
