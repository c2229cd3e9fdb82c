"""The upload server: pieces to other peers (zero-copy), and seed triggers from peers.

With a cluster identity (TLS) only members connect at all. A blob fetched with credentials
(protected) goes only to members with a certificate, asking for a caller of the registry
and repository it came from: without TLS (a loopback-only deployment) it is not shared at
all. Anyone else hears about it exactly what it hears about a blob this node does not
hold, so that the upload port does not tell who holds which private blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, BinaryIO, Callable, Iterator, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CollectorRegistry

from damselfly.core.jobs import ManifestPlacement, Placement, SignedStatement, Statement
from damselfly.lib.filesend import copy_within, sendfile_within
from damselfly.lib.sealed import SealError
from damselfly.lib.signed import Signature
from damselfly.lib.units import format_size
from damselfly.core.oci import Digest, OCIError, Origin, SourceRefused, SourceUnavailable
from damselfly.lib.ratelimit import TokenBucket
from damselfly.lib.serve import add_health_routes, json_object
from damselfly.blobs.service import BlobService
from damselfly.network.metrics import PeerMetrics
from damselfly.network.fetch import PIECE_READ_TIMEOUT
from damselfly.network.relay import RelayBook
from damselfly.storage.task import Task, TaskFailed
from damselfly.lib.tls import is_loopback, request_identity
from damselfly.core.wire import (COUNT_HEADER, MAX_RUN_PIECES, ORIGIN_HEADER, PIECE_DIGEST_HEADER, RECEIVER_HEADER,
                            RELAY_HEADER, SeedTrigger, TagConfirm, parse_number, piece_trailer, run_body_length)

log = logging.getLogger(__name__)
SEED_START_WAIT = 10.0
# How long a still-downloading seed holds a request for a piece it has not reached: under
# the asker's read timeout, so that the asker hears "not yet" (404) and asks again, instead
# of timing out and reporting this seed as a bad parent (then going to the registry).
SEED_PIECE_WAIT = PIECE_READ_TIMEOUT * 2 / 3
# With --upload-rate, a request waits for those queued before it, then for its own bytes,
# all before its headers. A backlog longer than what is left of SEED_PIECE_WAIT gets
# "busy" (503), and a run is cut to what the rate sends in a few seconds, so that the
# asker is answered within its read timeout instead of calling this parent bad.
RATE_RUN_SECONDS = 5.0
RELAY_WAIT = 5.0  # how long a peer a seed pointed an asker at waits for the piece it is getting
UPLOAD_BURST = 4 * 1024 * 1024  # what --upload-rate lets go at once: one piece of the largest common length


class PieceReports(Protocol):
    """The P2P network, as the upload server sees it."""

    async def reported(self, digest: str, indexes: range) -> None:
        """Return once the pieces' digests have gone to the scheduler (see network.Reporter)."""


@dataclass(frozen=True)
class SeedDuty:
    """What a seed peer's upload server does beyond a peer's: it takes seed triggers, fetching
    from the origin what peers ask for, and serves pieces still on their way from it."""

    # A registry name in a trigger -> its upstream URL, by this seed's own map (ValueError: refused).
    resolve_registry: Callable[[str], str]
    # (digest, reason): a task this seed accepted could not start; the scheduler stops offering it for the task.
    could_not_start: Callable[[str, str], None]
    # Resolve a tag at the registry and publish it for the cluster, in the background (see network.tags).
    confirm_tag: Callable[[TagConfirm], None]


@dataclass(frozen=True)
class PreheatDuty:
    """What a host does when its scheduler places a preheat job's parts on it."""

    # A registry name in a placement -> its upstream URL, by this host's own map (ValueError: refused).
    resolve_registry: Callable[[str], str]
    # Keep manifests and tags' resolutions (already checked against their digests) for pulls
    # while the registry is down, under the upstream URL.
    keep_manifests: Callable[[ManifestPlacement, str], None]
    # (sealed credentials, statement) -> the Authorization value they hold (SealError if they do not open here).
    open_credentials: Callable[[str, Statement], str]
    # (signed bytes, signature): SealError unless the manager signed them.
    verify: Callable[[bytes, Signature], None]
    cache_quota: int
    clock: Callable[[], float] = time.time


class UploadServer:
    def __init__(self, blobs: BlobService, network: PieceReports, seed_duty: SeedDuty | None, metrics: PeerMetrics,
                 registry: CollectorRegistry, slots: int = 16, piece_wait: float = SEED_PIECE_WAIT,
                 rate: int | None = None, send_timeout: float = 60.0, preheat: PreheatDuty | None = None) -> None:
        self.blobs = blobs
        self.network = network
        self.seed_duty = seed_duty  # None: a peer's, which refuses triggers and serves only the pieces it holds
        self.preheat = preheat  # None: placements are refused
        # Bandwidth cap for uploads; a burst of one 4 MiB piece. Both it and the slots may
        # change at run time (set_limits).
        self.limiter = TokenBucket(rate, UPLOAD_BURST) if rate else None
        self.metrics = metrics
        self.registry = registry
        self.slots = slots
        self.piece_wait = piece_wait
        self.send_timeout = send_timeout  # an asker that accepts no bytes for this long is cut off
        self._active = 0
        self.relays = RelayBook()
        self._seeding: set[asyncio.Task[None]] = set()

    @property
    def rate(self) -> int | None:
        return int(self.limiter.rate) if self.limiter is not None else None

    def set_limits(self, rate: int | None, slots: int) -> None:
        """A new upload rate (None: no cap) and slot count, from the cluster's configuration:
        requests that come after use them; uploads in flight finish as they started."""
        if rate != self.rate:
            self.limiter = TokenBucket(rate, UPLOAD_BURST) if rate else None
        self.slots = slots

    def application(self) -> web.Application:
        app = web.Application()
        add_health_routes(app, self.registry)
        app.router.add_get("/pieces/{digest}/{index}", self.piece)
        app.router.add_post("/api/v1/seed/tags", self.confirm_tag)  # before {digest}, which "tags" is not
        app.router.add_post("/api/v1/seed/{digest}", self.seed)
        app.router.add_post("/api/v1/preheat/blobs/{digest}", self.place_blob)
        app.router.add_post("/api/v1/preheat/manifests", self.place_manifests)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        for task in list(self._seeding):
            task.cancel()
        await asyncio.gather(*self._seeding, return_exceptions=True)

    async def piece(self, request: web.Request) -> web.StreamResponse:
        try:
            digest = Digest.parse(request.match_info["digest"])
            index = parse_number(request.match_info["index"], 0)
            wanted = parse_number(request.query.get("count", "1"), 1, MAX_RUN_PIECES)
        except (OCIError, ValueError) as exc:
            raise web.HTTPBadRequest(
                text=f"want /pieces/<digest>/<piece index>[?count=1..{MAX_RUN_PIECES}]: {exc}") from None
        seeding = self.seed_duty is not None
        member = is_member(request)
        answer_by = time.monotonic() + self.piece_wait  # every wait before the headers, together
        # Only members wait for a task about to start: a stranger must not tell by the time
        # of a 404 whether the blob is here.
        task = await self.blobs.wait_task(digest, min(SEED_START_WAIT, self.piece_wait) if seeding and member else 0)
        if task is None or not self._may_have(request, digest):
            self.metrics.upload_refused.labels("unknown_task").inc()  # one label: /metrics is on this port too
            raise web.HTTPNotFound(text=f"no task {digest} here")
        if not 0 <= index < task.piece_count:
            raise web.HTTPRequestRangeNotSatisfiable(text=f"piece {index} outside 0..{task.piece_count - 1}")
        relay_deadline = time.monotonic() + RELAY_WAIT  # for all a peer sends as it lands, the first piece too
        start = task.piece_span(index)[0]
        if task.sendable_end(index) <= start:  # nothing of it to send yet: wait here, holding no slot
            if seeding and not task.complete:  # a seed peer still downloading: serve the piece as it comes
                relay_deadline = answer_by  # the origin is slower to start than a peer
                asked_end = sum(task.piece_span(min(index + wanted, task.piece_count) - 1)) - 1
                left = max(0.0, answer_by - time.monotonic())
                try:
                    async with asyncio.timeout(left):  # a hard deadline: other pieces do not extend it
                        # The asked run's end goes with the wait: a seed filling by ranges gets it in one.
                        await task.readable_end(start, left, until=asked_end, on_its_way=True)
                except (TaskFailed, TimeoutError) as exc:
                    raise web.HTTPNotFound(text=f"piece {index} will not come: {exc or 'timed out'}") from None
            elif index not in task.fetching:
                self.metrics.upload_refused.labels("missing_piece").inc()
                raise web.HTTPNotFound(text=f"piece {index} not here")
            # A 404 now is "ask again" to the asker; a body cut short after the headers would
            # cost it the connection. Its first bytes, then, or its digest check (the last piece).
            if not await task.more(index, start, max(0.0, relay_deadline - time.monotonic())):
                self.metrics.upload_refused.labels("missing_piece").inc()
                raise web.HTTPNotFound(text=f"piece {index} did not come here in time")
        if self._active >= self.slots:
            self.metrics.upload_refused.labels("no_slot").inc()
            raise web.HTTPServiceUnavailable(text="all upload slots are busy")
        run = held_run(task, index, wanted)
        limiter = self.limiter  # the one this request started with, if the cluster's rate changes meanwhile
        if limiter is not None:  # a run the rate sends in a few seconds, one piece at least
            run = run[: max(1, int(limiter.rate * RATE_RUN_SECONDS) // task.piece_length)]
        receiver = request.headers.get(RECEIVER_HEADER)
        if seeding and receiver and _from_asker(receiver, request.remote) and index != task.piece_count - 1:
            relay = self.relays.route(str(digest), run, receiver)
            if relay is not None:
                await self._relay(task, run, relay, answer_by)
        sizes = [task.piece_span(i)[1] for i in run]
        if limiter is not None and (backlog := limiter.backlog()) > answer_by - time.monotonic():
            self.metrics.upload_refused.labels("rate_backlog").inc()
            raise web.HTTPServiceUnavailable(text=f"upload rate limit: {backlog:.0f}s of uploads queued")
        self._active += 1
        self.metrics.uploads.inc()
        try:
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(run_body_length(sizes)),
                       COUNT_HEADER: str(len(run))}
            if limiter is not None:
                await limiter.acquire(sum(sizes))
            response = web.StreamResponse(headers=headers)
            with open(task.path, "rb") as f:  # opened now: a later rename or eviction cannot cut it
                await response.prepare(request)
                try:
                    cut = await _send_as_it_lands(request, response, task, f, run, relay_deadline,
                                                  self.send_timeout, self._reported)
                    if cut is not None:
                        # Headers are out: a short body is how the asker learns. It keeps the
                        # pieces that came and asks the seed for the rest.
                        log.debug("piece %d of %s for %s did not come here after all", cut, digest, request.remote)
                        self.metrics.upload_refused.labels("run_cut").inc()
                        if request.transport is not None:
                            request.transport.abort()
                        return response
                except ConnectionError as exc:
                    # The asker stopped reading: it had no digest to check these pieces against,
                    # or one of them failed its check, or it froze (cut off after send_timeout).
                    # Its business, not an error here; the short body ends the connection.
                    log.debug("%s stopped receiving pieces %s of %s: %s", request.remote, run, digest, exc)
                    self.metrics.uploads_abandoned.inc()
                    if request.transport is not None:
                        request.transport.abort()
                    return response
            await response.write_eof()
            self.metrics.uploaded.inc(sum(sizes))
            return response
        finally:
            self._active -= 1
            self.metrics.uploads.dec()

    async def _relay(self, task: Task, run: range, relay: str, answer_by: float) -> None:
        """Point the asker at ``relay``, a peer this seed is sending ``run`` to, with the pieces'
        digests: its link then carries each piece about once. The digests of pieces still
        arriving come when they are whole here (the relay is getting them meanwhile); if
        none is by ``answer_by``, return: the asker is served here."""
        while not task.bitmap.has(run.stop - 1) and task.error is None and time.monotonic() < answer_by:
            await task.wait_change(answer_by - time.monotonic())
        verified = next((i for i in run if not task.bitmap.has(i) or i not in task.digests), run.stop)
        if verified == run.start:
            return
        run = range(run.start, verified)
        await self._reported(task, run)
        self.metrics.upload_refused.labels("relayed").inc()
        raise web.HTTPServiceUnavailable(text=f"piece {run.start} is on its way to {relay}: ask there", headers={
            RELAY_HEADER: relay, PIECE_DIGEST_HEADER: ",".join(task.digests[i] for i in run)})

    async def _reported(self, task: Task, pieces: range) -> None:
        """Pieces' digests go out only once the scheduler knows them (see network.Reporter)."""
        await self.network.reported(str(task.digest), pieces)

    def _may_have(self, request: web.Request, digest: Digest) -> bool:
        """Pieces of a blob fetched with credentials go only to members proven by a cluster
        certificate, asking for a caller whom the registry and repository it came from
        accepted; to anyone else it is not here. Without the origin, a client naming a
        registry that says yes to everything could read another's private blob through any
        peer; without the certificate, any local process could claim that origin."""
        origin = self.blobs.protected_origin(digest)
        return origin is None or (request_identity(request) is not None
                                  and request.headers.get(ORIGIN_HEADER) == origin)

    def _seed_duty(self, request: web.Request) -> SeedDuty:
        """A seed's duty, for a member (with TLS, a certificate of the cluster's CA)."""
        if request.transport is not None and request.transport.get_extra_info("sslcontext") is not None \
                and request_identity(request) is None:
            raise web.HTTPForbidden(text="a seed trigger needs a cluster member's certificate")
        if self.seed_duty is None:
            raise web.HTTPConflict(text="not a seed peer")
        return self.seed_duty

    async def seed(self, request: web.Request) -> web.Response:
        """A peer asks this seed to fetch a task from the origin, with its caller's credentials."""
        duty = self._seed_duty(request)
        with malformed("seed trigger"):
            digest = Digest.parse(request.match_info["digest"])
            trigger = SeedTrigger.from_json(await json_object(request))
            upstream = duty.resolve_registry(trigger.registry)
        origin = Origin(upstream, trigger.repository, trigger.authorization)
        task = asyncio.create_task(self._prefetch(duty, digest, origin, trigger.ranged))
        self._seeding.add(task)
        task.add_done_callback(self._seeding.discard)
        return web.json_response({"accepted": str(digest)}, status=202)

    async def _prefetch(self, duty: SeedDuty, digest: Digest, origin: Origin, ranged: bool) -> None:
        try:
            await self.blobs.prefetch(digest, origin, ranged)
        except (SourceRefused, SourceUnavailable) as exc:
            message = getattr(exc, "message", str(exc))
            log.error("seed download of %s from %s/%s could not start: %s", digest, origin.registry,
                      origin.repository, message)
            duty.could_not_start(str(digest), f"seed could not start from the origin: {message}")

    async def confirm_tag(self, request: web.Request) -> web.Response:
        """A node asks this seed to resolve a tag at the registry (with its caller's
        credentials) and publish what the registry answers: 202 at once, the work goes on."""
        duty = self._seed_duty(request)
        with malformed("tag confirmation"):
            confirm = TagConfirm.from_json(await json_object(request))
            duty.resolve_registry(confirm.registry)
        duty.confirm_tag(confirm)
        return web.json_response({"accepted": f"{confirm.repository}:{confirm.tag}"}, status=202)

    def _preheat_duty(self, request: web.Request) -> PreheatDuty:
        """Placements come from the cluster's schedulers only: a scheduler certificate with
        TLS, this machine without (loopback deployments)."""
        identity = request_identity(request)
        if identity is not None:
            if not identity.has_role("scheduler"):
                raise web.HTTPForbidden(text=f"{identity.name} ({identity.role}) is not a scheduler")
        elif request.transport is not None and request.transport.get_extra_info("sslcontext") is not None:
            raise web.HTTPForbidden(text="a placement needs a scheduler's certificate")
        elif request.remote is None or not is_loopback(request.remote):
            raise web.HTTPForbidden(text="a placement comes from a scheduler on this machine only (no TLS)")
        if self.preheat is None:
            raise web.HTTPConflict(text="this host takes no preheat placements")
        return self.preheat

    def _statement(self, duty: PreheatDuty, signed: SignedStatement) -> Statement:
        """The statement, if the manager signed it and its deadline has not passed: a
        scheduler or a queue on the way can change nothing a host acts on."""
        try:
            duty.verify(signed.statement.canonical(), signed.signature)
        except SealError as exc:
            raise web.HTTPForbidden(text=f"placement refused: {exc}") from None
        if duty.clock() > signed.statement.deadline:
            raise web.HTTPGone(text=f"preheat job {signed.statement.job_id} is past its deadline")
        return signed.statement

    async def place_blob(self, request: web.Request) -> web.Response:
        """Hold a blob of a preheat job: answers once it is stored (200), or why not."""
        duty = self._preheat_duty(request)
        with malformed("placement"):
            digest = Digest.parse(request.match_info["digest"])
            placement = Placement.from_json(await json_object(request))
        statement = self._statement(duty, placement.signed)
        size = statement.blobs.get(str(digest))
        if size is None:
            raise web.HTTPBadRequest(text=f"{digest} is not a blob of preheat job {statement.job_id}")
        with malformed("placement"):
            upstream = duty.resolve_registry(statement.registry)
        if statement.total_bytes > duty.cache_quota:
            raise web.HTTPInsufficientStorage(
                text=f"the preheat needs {format_size(statement.total_bytes)}, more than this host's cache quota of "
                     f"{format_size(duty.cache_quota)}")
        authorization = None
        if placement.credentials is not None:
            if self.seed_duty is None:
                raise web.HTTPBadRequest(text="credentials go to seed peers only")
            try:
                authorization = duty.open_credentials(placement.credentials, statement)
            except SealError as exc:
                raise web.HTTPBadRequest(text=str(exc)) from None
        origin = Origin(upstream, statement.repository, authorization, private=statement.private)
        try:
            await self.blobs.place(digest, origin, length=size)
        except SourceRefused as exc:
            raise web.HTTPBadGateway(text=f"the registry answered {exc.status}") from None
        except SourceUnavailable as exc:
            return web.json_response({"error": exc.message}, status=exc.status)
        return web.json_response({"digest": str(digest), "state": "done"})

    async def place_manifests(self, request: web.Request) -> web.Response:
        duty = self._preheat_duty(request)
        with malformed("placement"):
            placement = ManifestPlacement.from_json(await json_object(request))
        statement = self._statement(duty, placement.signed)
        with malformed("placement"):
            upstream = duty.resolve_registry(statement.registry)
        duty.keep_manifests(placement, upstream)
        return web.json_response({"manifests": len(placement.manifests), "tags": len(statement.tags)})


@contextlib.contextmanager
def malformed(what: str) -> Iterator[None]:
    """What a request's path or body says wrong (OCIError, or ValueError: WireError and
    JobError included) as a 400 "malformed <what>: <why>"."""
    try:
        yield
    except OCIError as exc:
        raise web.HTTPBadRequest(text=f"malformed {what}: {exc.message}") from None
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"malformed {what}: {exc}") from None


def is_member(request: web.Request) -> bool:
    """An asker that is a cluster member: it showed a certificate the cluster CA signed (TLS),
    or it is on this machine (plain HTTP, loopback-only deployments)."""
    return request_identity(request) is not None or (request.remote is not None and is_loopback(request.remote))


def held_run(task: Task, index: int, wanted: int) -> range:
    """Piece ``index`` (here, or on its way) and as many of the next ``wanted - 1`` as are
    verified here or still to come in the request that brings piece ``index`` (not the
    blob's last, which waits for the whole blob's check), up to the first gap: one body.

    A seed filling from the origin sends what a range brings as it arrives, rather than the
    first piece alone and the rest on another request; a peer that a seed pointed later
    askers at sends them what it is getting. Pieces of its other requests are left out: the
    seed may have pointed one of those at this asker, and the two would wait on each other.
    """
    coming = task.fetching.get(index, range(0))
    end = index + 1
    last = task.piece_count - 1
    while end < min(index + wanted, task.piece_count) and (
            task.bitmap.has(end) or (end in coming and end != last)):
        end += 1
    return range(index, end)


async def _send_as_it_lands(request: web.Request, response: web.StreamResponse, task: Task, file: BinaryIO,
                            run: range, deadline: float, send_timeout: float,
                            reported: Callable[[Task, range], Awaitable[None]]) -> int | None:
    """Send the pieces ``run`` of the task's file, each followed by its digest: the bytes as
    they arrive here (cut-through: a copy from the origin's as it writes them, a parent's
    once verified), the digest once the piece is verified and ``reported``. Zero-copy
    sends; over TLS, copies (see copy_within). Return the first piece that stopped being on
    its way without landing, or had not landed by ``deadline`` (``time.monotonic``; a slow
    relay must not hold the asker for long): the body is then short, and the asker keeps
    what was whole and gets the rest elsewhere. None when all went."""
    for index in run:
        sent, end = task.piece_span(index)[0], sum(task.piece_span(index))
        while sent < end:  # all of it only once verified (see Task.sendable_end)
            ready = task.sendable_end(index)
            if ready > sent:
                await _send_span(request, response, file, sent, ready - sent, send_timeout)
                sent = ready
            elif not await task.more(index, sent, max(0.0, deadline - time.monotonic())):
                return index
        await reported(task, range(index, index + 1))
        await response.write(piece_trailer(task.digests.get(index)))
    return None


async def _send_span(request: web.Request, response: web.StreamResponse, file: BinaryIO, begin: int, size: int,
                     send_timeout: float) -> None:
    transport = request.transport
    if transport is None or transport.is_closing():  # the asker went away while this waited
        raise ConnectionResetError("peer went away")
    if transport.get_extra_info("ssl_object") is not None:
        await copy_within(response.write, file, begin, size, send_timeout)
    else:
        await sendfile_within(transport, file, begin, size, send_timeout)  # type: ignore[arg-type]


def _from_asker(receiver: str, remote: str | None) -> bool:
    """A receiver URL on the asker's own address: nobody can have a seed send others elsewhere."""
    try:
        host = urlsplit(receiver).hostname
    except ValueError:
        return False
    return host is not None and remote is not None and host == remote.strip("[]")
