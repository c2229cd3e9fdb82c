"""A daemon's P2P side: downloads pieces from parents that the scheduler hands out,
reports what it holds, and falls back to the origin only when it must.

Trust: a piece from another peer counts only after it matches the digest
the scheduler published (digests come from the seeds that read the origin). A seed peer
may also send the digest of a piece it has just fetched in ``X-Piece-Digest``. A parent
whose bytes do not match is dropped and reported. Piece digests only say that bytes are
the ones their source meant: a source may lie about all of them at once. So every node
hashes the whole blob itself, beside the download, and nothing is committed, nor the last
byte given to a whole reader, before it matched; a mismatch is reported to the scheduler,
which then stops using that blob's digest sources for this peer.

Credentials never go to the scheduler: a peer told to find a seed ("seed") sends the
caller's credentials to the seeds itself, over mutual TLS to seed certificates only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from damselfly.core.oci import Origin
from damselfly.lib.tls import ClusterTLS, role_hostname
from damselfly.lib.waiting import wait_until_set, within
from damselfly.network.fetch import (PIECE_READ_TIMEOUT, BadParent, ParentBusy, PieceCorrupt, PieceFetcher, PieceRefused,
                                 PieceRelayed, PieceRequest, PieceWriteFailed, TransferFailed)
from damselfly.network.metrics import PeerMetrics
from damselfly.network.policy import DownloadState, Parent, may_give, next_request
from damselfly.core.pieces import PieceBitmap
from damselfly.blobs.rangefill import ON_DEMAND_QUIET, RangeFill
from damselfly.storage.task import Task, TaskFailed
from damselfly.storage.writer import CopySource, hash_file
from damselfly.registry.client import AsyncRegistryClient
from damselfly.network.scheduler_client import SchedulerClient, SchedulerUnavailable
from damselfly.core.wire import (DoneReport, PieceNews, PieceReport, Schedule, SeedInfo, SeedTrigger,
                            TaskRegister, TriggerFailed, WireError, origin_key)

log = logging.getLogger(__name__)
REPORT_INTERVAL = 0.1
POLL_SPACING = 0.1  # seconds between a peer's schedule polls while it has parents
SEED_TRIGGER_TIMEOUT = 2.0  # per seed: a healthy one answers at once (202); the download comes after
SEED_TRIGGER_BUDGET = 4.0  # for every seed of one trigger: within the scheduler's trigger lease (5 s)
CONFIRM_WAIT = 2.0  # the most a piece waits for its report to reach the scheduler before it is served
HASH_CHUNK = 4 * 1024 * 1024  # bytes read at once by the whole-blob check


@dataclass
class Reporter:
    """Batches piece reports of one task to its scheduler.

    A reporter whose reports carry digests (``from_origin``: a seed, or a peer sent back to
    source) lets the upload server wait for a piece's report before serving the piece
    (``confirm``): a seed killed right after serving must not leave pieces in the swarm
    whose digest the scheduler never heard of (nobody could take them from their holders).
    """

    network: "Network"
    task: Task
    origin: Origin
    scheduler: str | None = None
    pending: list[PieceNews] = field(default_factory=list)
    from_origin: bool = False
    digest_mismatch: bool = False  # the blob failed its whole check here: the done report says so
    unconfirmed: set[int] = field(default_factory=set)  # pieces reported with a digest, not yet delivered
    stop_listening: Callable[[], None] = lambda: None  # a seed's reporter hears of each piece the task stores
    _flusher: asyncio.Task[None] | None = None
    _delivered: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, index: int, cost: float | None = None, parent: str | None = None) -> None:
        digest = self.task.digests.get(index) if self.from_origin else None
        self.pending.append(PieceNews(index, digest, cost, parent))
        if digest is not None:
            self.unconfirmed.add(index)
        if self._flusher is None or self._flusher.done():
            self._flusher = self.network.spawn(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(REPORT_INTERVAL)
        await self.flush()

    async def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            report = PieceReport(self.network.host_id, tuple(batch), self.from_origin).to_json()
            try:
                self.scheduler, answer = await self.network.scheduler.call(
                    str(self.task.digest), "POST", "pieces", scheduler=None, json=report)
                if answer["status"] == 404:  # the scheduler lost the task (restarted, or failed over)
                    await self.register(seeding=self.from_origin)
                    self.scheduler, answer = await self.network.scheduler.call(
                        str(self.task.digest), "POST", "pieces", scheduler=self.scheduler, json=report)
            except SchedulerUnavailable as exc:
                # Not kept for later: pieces must not wait on a scheduler that is down (peers
                # that keep their parents go on without it); a new scheduler hears of them at
                # the next register.
                log.debug("piece report for %s not delivered: %s", self.task.digest, exc)
            finally:
                self.unconfirmed.difference_update(p.index for p in batch)
                self._delivered.set()
                self._delivered = asyncio.Event()

    async def confirm(self, indexes: range, timeout: float) -> bool:
        """Wait until the reports of ``indexes`` went out (delivered, or the scheduler could
        not be reached), at most ``timeout`` seconds; whether they did."""
        deadline = time.monotonic() + timeout
        while not self.unconfirmed.isdisjoint(indexes):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if any(p.index in indexes for p in self.pending):
                await within(asyncio.shield(self.network.spawn(self.flush())), left)  # now, not at the next batch
            else:  # in flight in another flush
                await wait_until_set(self._delivered, left)
        return True

    async def register(self, seeding: bool) -> dict[str, Any]:
        held = tuple(i for i in range(self.task.piece_count) if self.task.bitmap.has(i))
        self.scheduler, answer = await self.network.scheduler.call(
            str(self.task.digest), "POST", "register",
            json=TaskRegister(self.network.host_id, self.task.length, self.task.piece_length, held, seeding,
                              self.task.ranged).to_json())
        return answer


class Network:
    def __init__(self, scheduler: SchedulerClient, registry: AsyncRegistryClient, metrics: PeerMetrics, *,
                 is_seed: bool, concurrency: int = 4, scheduler_deadline: float = 10.0,
                 piece_timeout: float = PIECE_READ_TIMEOUT, no_parent_deadline: float = 15.0,
                 tls: ClusterTLS | None = None) -> None:
        self.scheduler = scheduler
        self.tls = tls  # cluster identity: piece fetches and seed triggers over mutual TLS
        self.registry = registry
        self.metrics = metrics
        self.is_seed = is_seed
        self.concurrency = concurrency
        self.scheduler_deadline = scheduler_deadline
        self.no_parent_deadline = no_parent_deadline
        # Threads for piece transfers: enough for a few tasks at once, each with its workers.
        self.fetcher = PieceFetcher(4 * concurrency, read_timeout=piece_timeout,
                                    context=tls.client_context() if tls is not None else None)
        self.origin_copiers = ThreadPoolExecutor(8, thread_name_prefix="origin-range")  # back-to-source copies
        self._background: set[asyncio.Task[Any]] = set()
        self._reporters: dict[str, Reporter] = {}
        self._triggers: aiohttp.ClientSession | None = None  # seed triggers, made at the first
        self._seed_context: ssl.SSLContext | None = None  # ... over TLS to seed certificates only

    @property
    def host_id(self) -> str:
        return self.scheduler.host.id

    @property
    def upload_url(self) -> str:
        return self.scheduler.host.upload_url

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        """A background task this network owns and cancels on close."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._finished_background)
        return task

    async def settled(self) -> None:
        """Wait for the background work started so far (reports to the scheduler, seed
        triggers' failure reports) to end: a caller that must know its reports went out."""
        await asyncio.gather(*list(self._background), return_exceptions=True)

    def _finished_background(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %r", task.exception(), exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._triggers is not None:
            await self._triggers.close()
        await self.fetcher.close()
        self.origin_copiers.shutdown(wait=False)

    # -- seed side -----------------------------------------------------------------

    def publish(self, task: Task, origin: Origin) -> None:
        key = str(task.digest)
        if key in self._reporters:
            return
        reporter = Reporter(self, task, origin, from_origin=True)
        reporter.stop_listening = task.piece_landed.subscribe(reporter.add)
        self._reporters[key] = reporter

        async def register() -> None:
            with contextlib.suppress(SchedulerUnavailable):
                await reporter.register(seeding=not task.complete)
            if task.complete:  # the scheduler may not know the digests (it restarted): give them again
                for index in range(task.piece_count):
                    reporter.add(index)
                await reporter.flush()
                with contextlib.suppress(SchedulerUnavailable):
                    await self.scheduler.call(str(task.digest), "POST", "done",
                                              json={"host_id": self.host_id, "success": True})

        self.spawn(register())

    def finished(self, task: Task, success: bool, reason: str = "") -> None:
        reporter = self._reporters.pop(str(task.digest), None)
        if reporter is not None:
            reporter.stop_listening()
            self._report_done(str(task.digest), reporter, success=success, reason=reason,
                              digest_mismatch=not success and reporter.digest_mismatch)

    def seed_failed(self, digest: str, reason: str) -> None:
        """Tell the scheduler this seed could not start a task it accepted, so that it stops
        offering this seed for it (and its peers go to the origin when no other seed can)."""
        self._report_done(digest, None, success=False, reason=reason, could_not_start=True)

    def _report_done(self, digest: str, reporter: Reporter | None, **outcome: Any) -> None:
        """In the background: the task's end to its scheduler, after the reporter's last pieces."""

        async def report() -> None:
            if reporter is not None:
                await reporter.flush()
            with contextlib.suppress(SchedulerUnavailable):
                await self.scheduler.call(digest, "POST", "done", json=DoneReport(self.host_id, **outcome).to_json())

        self.spawn(report())

    async def reported(self, digest: str, indexes: range, timeout: float = CONFIRM_WAIT) -> None:
        """Before serving pieces: their digests have gone to the scheduler (see Reporter)."""
        reporter = self._reporters.get(digest)
        if reporter is not None and not await reporter.confirm(indexes, timeout):
            log.warning("pieces %d..%d of %s served before their report reached the scheduler (%.0fs)",
                        indexes.start, indexes.stop - 1, digest, timeout)

    async def trigger_seeds(self, task: Task, origin: Origin, seeds: tuple[SeedInfo, ...]) -> SeedInfo | None:
        """Ask ``seeds``, in order, to fetch the task with the caller's credentials, until one
        answers 202 (returned); report each that did not. With a cluster identity only a host
        with a seed certificate can receive the trigger (and the credentials in it)."""
        trigger = SeedTrigger(task.length, task.piece_length, registry_name(origin.registry), origin.repository,
                              task.ranged, origin.authorization).to_json()
        deadline = time.monotonic() + SEED_TRIGGER_BUDGET
        for seed in seeds:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            reason = await self.ask_seed(seed, str(task.digest), trigger, min(SEED_TRIGGER_TIMEOUT, left))
            if reason is None:
                log.info("seed %s fetches %s from the origin", seed.host_id, task.digest)
                return seed
            log.warning("seed %s did not take %s: %s", seed.host_id, task.digest, reason)
            self.metrics.seed_triggers_failed.inc()
            self.spawn(self._report_trigger_failed(str(task.digest), seed.host_id, reason))
        return None

    async def ask_seed(self, seed: SeedInfo, what: str, body: dict[str, Any], timeout: float) -> str | None:
        """POST ``body`` (it may carry a caller's credentials) to the seed's ``/api/v1/seed/<what>``;
        None when it answered 202, else why not. With a cluster identity, only to a seed certificate."""
        tls: dict[str, Any] = {}
        if self.tls is not None:
            if not seed.upload_url.startswith("https://"):
                return f"{seed.upload_url} is not https: the credentials would go in clear"
            if self._seed_context is None:
                self._seed_context = self.tls.client_context("seed")
            tls = {"ssl": self._seed_context, "server_hostname": role_hostname("seed")}
        if self._triggers is None:
            self._triggers = aiohttp.ClientSession()
        try:
            async with self._triggers.post(f"{seed.upload_url}/api/v1/seed/{what}", json=body,
                                           timeout=aiohttp.ClientTimeout(total=timeout), **tls) as response:
                if response.status == 202:
                    return None
                return f"answered {response.status}: {(await response.text())[:200]}"
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            return f"unreachable: {exc or exc.__class__.__name__}"

    async def _report_trigger_failed(self, digest: str, seed_id: str, reason: str) -> None:
        with contextlib.suppress(SchedulerUnavailable):
            await self.scheduler.call(digest, "POST", "trigger-failed",
                                      json=TriggerFailed(self.host_id, seed_id, reason).to_json())

    # -- peer side -----------------------------------------------------------------

    async def download(self, task: Task, origin: Origin) -> str:
        reporter = Reporter(self, task, origin)
        self._reporters[str(task.digest)] = reporter
        return await PieceDownload(self, task, origin, reporter).run()


class PieceDownload:
    """Fills one task from its parents with several pieces in flight."""

    def __init__(self, network: Network, task: Task, origin: Origin, reporter: Reporter) -> None:
        self.network = network
        self.task = task
        self.origin = origin
        self.reporter = reporter
        self.parents: dict[str, Parent] = {}
        self.dropped: set[str] = set()
        self.triggered: Parent | None = None  # the seed that took this peer's trigger, until a schedule lists it
        self.refusing: set[str] = set()  # parents whose last answer was "not here" (404)
        self.bad_relays: set[str] = set()  # upload URLs of peers a seed pointed at that sent wrong bytes
        self.digests: dict[int, str] = {}
        self.version = -1
        self.epoch = ""  # of the scheduler that gave ``version``
        self.swarm = 1  # peers downloading this task at once, from the scheduler
        self.changed = asyncio.Event()
        self.back_to_source: str | None = None
        self.failure: str | None = None
        self.last_progress = time.monotonic()
        self._triggering: asyncio.Task[None] | None = None  # asking seeds to fetch the task (action "seed")
        self.rng = random.Random()  # the policy's random choices (which piece, which of equal parents)

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def run(self) -> str:
        """Fill the task; return the hex digest of the whole blob as this node read it (the
        caller commits only if it is the task's: no scheduler's or seed's word replaces it)."""
        started = time.monotonic()
        stop_listening = self.task.reader_waiting.subscribe(self._notify)
        checking = self.network.spawn(whole_blob_digest(self.task))
        try:
            try:
                answer = await self.reporter.register(seeding=False)
                self.network.metrics.schedule_latency.observe(time.monotonic() - started)
                self._apply(answer)
            except SchedulerUnavailable as exc:
                self.back_to_source = f"scheduler unreachable: {exc}"
            if self.back_to_source is None and self.failure is None:
                poller = self.network.spawn(self._poll())
                workers = [self.network.spawn(self._work()) for _ in range(self.network.concurrency)]
                try:
                    while not self._all_present() and self.back_to_source is None and self.failure is None:
                        changed = self.changed
                        await wait_until_set(changed, 1.0)
                        self._check_stuck()
                finally:
                    for worker in (poller, *workers, self._triggering):
                        if worker is not None:
                            worker.cancel()
                    await asyncio.gather(poller, *workers, return_exceptions=True)
            if self.failure is not None:
                raise TaskFailed(self.failure)
            if self.back_to_source is not None:
                await self._from_origin(self.back_to_source)
            await self.reporter.flush()
            actual = await checking
            if actual != self.task.digest.hex:
                self.reporter.digest_mismatch = True
                self.network.metrics.blob_digest_failures.inc()
                log.error("%s assembled from pieces that matched their digests is not the blob (sha256 %s): "
                          "the digests' sources are reported", self.task.digest, actual)
            return actual
        finally:
            checking.cancel()
            stop_listening()
            self.network.metrics.parents.dec(len(self.parents))

    def _all_present(self) -> bool:
        return all(self.task.has_or_holds(i) for i in range(self.task.piece_count))

    def _check_stuck(self) -> None:
        """No piece for ``no_parent_deadline`` and no parent that can give a missing one: go
        back to the registry (the scheduler's parents, however many, are no use)."""
        idle = time.monotonic() - self.last_progress
        if idle <= self.network.no_parent_deadline:
            return
        lacking = [i for i in range(self.task.piece_count) if not self.task.has_or_holds(i)]
        if not any(may_give(p, lacking, self.digests, self.refusing) for p in self.parents.values()):
            self.back_to_source = f"no parent could serve for {idle:.0f}s"

    def _apply(self, answer: dict[str, Any]) -> None:
        """Take a schedule: parents with their pieces, digests, and what to do."""
        if answer.get("status", 200) >= 400:
            raise SchedulerUnavailable(f"scheduler refused: {answer.get('error')}")
        try:
            schedule = Schedule.from_json(answer)
        except WireError as exc:
            raise SchedulerUnavailable(f"malformed schedule: {exc}") from None
        log.debug("schedule for %s: %s, parents %s, %d digests", self.task.digest, schedule.action,
                  [p.host_id for p in schedule.parents], len(schedule.digests))
        self.version, self.epoch = schedule.version, schedule.epoch
        if schedule.action == "fail":
            self.failure = f"the network gave up on this task: {schedule.reason}"
        elif schedule.action == "back_to_source":
            self.back_to_source = f"scheduler: {schedule.reason}"
        elif schedule.action == "seed" and self._triggering is None:
            self._triggering = self.network.spawn(self._trigger(schedule.seeds))
        self.digests.update(schedule.digests)
        self.swarm = schedule.swarm
        before = len(self.parents)
        fresh: dict[str, Parent] = {}
        for p in schedule.parents:
            if p.host_id in self.dropped:
                continue
            try:
                bitmap = PieceBitmap(self.task.piece_count, p.bitmap)
            except ValueError:
                continue  # a bitmap of another length: a schedule for another version of the task
            parent = self.parents.get(p.host_id)  # the same object: workers count their requests on it
            if parent is None:
                parent = Parent(p.host_id, p.upload_url, p.is_seed, p.seeding, bitmap)
            else:
                parent.bitmap, parent.seeding = bitmap, p.seeding
            fresh[parent.host_id] = parent
        triggered = self.triggered
        if triggered is not None and triggered.host_id not in self.dropped:
            if triggered.host_id in fresh:
                self.triggered = None
            else:
                fresh[triggered.host_id] = triggered
        self.parents = fresh
        self.network.metrics.parents.inc(len(self.parents) - before)
        self._notify()

    async def _trigger(self, seeds: tuple[SeedInfo, ...]) -> None:
        """This peer holds the task's trigger lease: a seed fetches it, or this peer does.

        The seed that takes it is a parent at once: it holds this peer's first requests until
        the pieces start to arrive, where waiting for the scheduler to list it would cost a
        registration and a poll (about 35 ms here) before the first byte of every cold blob."""
        seed = await self.network.trigger_seeds(self.task, self.origin, seeds)
        if seed is None:
            self.back_to_source = f"no seed: none of {len(seeds)} seed peers took the task"
            self._notify()
        elif seed.host_id not in self.parents and seed.host_id not in self.dropped:
            self.triggered = Parent(seed.host_id, seed.upload_url, is_seed=True, seeding=True,
                                    bitmap=PieceBitmap(self.task.piece_count))
            self.parents[seed.host_id] = self.triggered
            self.network.metrics.parents.inc()
            self._notify()
        self._triggering = None  # a later "seed" answer (the seed failed to start) asks again

    async def _poll(self) -> None:
        """Long-poll the scheduler for new parents and digests; fail over along the ring."""
        unreachable_since: float | None = None
        while True:
            try:
                _, answer = await self.network.scheduler.call(
                    str(self.task.digest), "GET", "schedule",
                    params={"host_id": self.network.host_id, "since": str(self.version), "epoch": self.epoch},
                    timeout=15)
                if answer["status"] == 404:
                    answer = await self.reporter.register(seeding=False)
                self._apply(answer)
                unreachable_since = None
                if self.parents:
                    # Every piece report wakes every poller; news that waits this long costs
                    # little (a seed can always serve), answers to each report cost CPU everywhere.
                    await asyncio.sleep(POLL_SPACING)
            except SchedulerUnavailable as exc:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.network.scheduler_deadline and not self.parents:
                    self.back_to_source = f"scheduler unreachable for {now - unreachable_since:.0f}s: {exc}"
                    self._notify()
                    return
                await asyncio.sleep(0.5)

    def _state(self) -> DownloadState:
        """What the choice of the next request looks at, as it is now."""
        task = self.task
        return DownloadState(
            needed=frozenset(i for i in range(task.piece_count) if task.needed(i)), waited_for=task.wanted_until,
            rest_may_follow=task.rest_may_follow(ON_DEMAND_QUIET), parents=list(self.parents.values()),
            digests=self.digests, swarm=self.swarm, concurrency=self.network.concurrency,
            piece_length=task.piece_length, ranged=task.ranged)

    async def _work(self) -> None:
        while True:
            chosen = next_request(self._state(), self.rng)
            if chosen is None:
                changed = self.changed
                await wait_until_set(changed, 0.5)
                continue
            run, parent = chosen.run, chosen.parent
            log.debug("pieces %d..%d of %s from %s", run[0], run[-1], self.task.digest, parent.host_id)
            self.task.fetch_started(run)
            parent.in_flight += 1
            try:
                await self._fetch(run, parent)
            except BadParent as exc:
                if isinstance(exc, PieceCorrupt):
                    self.network.metrics.piece_failures.inc()
                self._drop(parent, str(exc), bad=True)
            except PieceWriteFailed as exc:
                self.failure = f"cannot write piece {run[0]}: {exc}"
                self._notify()
            except (PieceRefused, TransferFailed) as exc:
                log.debug("pieces %d..%d of %s from %s failed: %s", run[0], run[-1], self.task.digest,
                          parent.host_id, exc)
                if isinstance(exc, ParentBusy):
                    await asyncio.sleep(parent.busy_wait())
                elif isinstance(exc, PieceRefused):
                    self.refusing.add(parent.host_id)
                    wait = parent.refused_wait()
                    if wait is None:
                        self._drop(parent, f"{exc.__class__.__name__}: {exc}", bad=False)
                    else:
                        await asyncio.sleep(wait)
                else:
                    self._drop(parent, f"{exc.__class__.__name__}: {exc}", bad=True)
            finally:
                self.task.fetch_ended(run)
                parent.in_flight -= 1

    def _drop(self, parent: Parent, reason: str, bad: bool) -> None:
        if self.parents.pop(parent.host_id, None) is None:
            return
        self.network.metrics.parents.dec()
        if not bad:
            return
        self.dropped.add(parent.host_id)
        self.network.metrics.bad_parents.inc()
        log.warning("dropped parent %s for %s: %s", parent.host_id, self.task.digest, reason)
        self.network.spawn(self._report_bad({"parent_id": parent.host_id}, reason))
        self._notify()

    async def _report_bad(self, parent: dict[str, str], reason: str) -> None:
        """Tell the scheduler, which then offers that parent to this peer no more; ``parent``
        names it by ``parent_id``, or by ``parent_url`` when a seed pointed at it."""
        with contextlib.suppress(SchedulerUnavailable):
            await self.network.scheduler.call(str(self.task.digest), "POST", "bad-parent",
                                              json={"host_id": self.network.host_id, **parent, "reason": reason})

    async def _fetch(self, pieces: range, parent: Parent) -> None:
        request = PieceRequest(parent.url, str(self.task.digest), pieces.start,
                               tuple(self.task.piece_span(i)[1] for i in pieces), self.task.path,
                               self.task.piece_span(pieces.start)[0], tuple(self.digests.get(i) for i in pieces),
                               trust_sent_digest=parent.is_seed,
                               receiver=self.network.upload_url if parent.is_seed else None,
                               origin=origin_key(self.origin.registry, self.origin.repository))
        arrival = _Arrival(self, "seed" if parent.is_seed else "peer", parent.host_id)
        try:
            await self.network.fetcher.fetch(request, arrival.landed)
        except PieceRelayed as relay:  # sent elsewhere: its cost says nothing of this parent
            await self._fetch_relayed(request, relay, arrival)
        parent.busy_answers = 0
        self.refusing.discard(parent.host_id)

    async def _fetch_relayed(self, request: PieceRequest, relay: PieceRelayed, arrival: "_Arrival") -> None:
        """The run from the peer a seed pointed at (checked against the seed's digests); what
        that does not bring, from the seed itself, asked not to relay again."""
        arrival.source, arrival.sender = "peer", None
        try:
            await self.network.fetcher.fetch(replace(
                request, parent_url=relay.url, sizes=request.sizes[: len(relay.digests)], digests=relay.digests,
                trust_sent_digest=False, receiver=None), arrival.landed)
        except (PieceRefused, BadParent, TransferFailed) as exc:
            # A short body is the pointed-at peer's way of saying a piece will not come
            # (routine while the seed still fills); wrong bytes are worth an operator's look.
            corrupt = isinstance(exc, PieceCorrupt)
            log.log(logging.WARNING if corrupt else logging.DEBUG,
                    "pieces from %s, where a seed pointed, failed (%s); asking the seed", relay.url, exc)
            if corrupt:
                self.network.metrics.piece_failures.inc()
                self._bad_relay(relay.url, str(exc))
        rest = rest_of_run(request, arrival.count)
        if rest is not None:
            arrival.source = "seed"
            await self.network.fetcher.fetch(replace(rest, receiver=None), arrival.landed)

    def _bad_relay(self, url: str, reason: str) -> None:
        """A peer a seed pointed at sent wrong bytes: dropped if it is a parent here too, and
        reported either way, once (the seed may point this peer at it again)."""
        parent = next((p for p in self.parents.values() if p.url == url), None)
        if parent is not None:
            self._drop(parent, reason, bad=True)
        elif url not in self.bad_relays:
            self.bad_relays.add(url)
            self.network.metrics.bad_parents.inc()
            self.network.spawn(self._report_bad({"parent_url": url}, reason))

    def _landed(self, index: int, digest: str, source: str, cost: float | None, sender: str | None) -> None:
        """A piece from a parent is verified and written."""
        self.task.digests[index] = digest
        self.task.piece_done(index)  # the last is held from whole readers until this node's check
        self.last_progress = time.monotonic()
        self.network.metrics.bytes.labels(source).inc(self.task.piece_span(index)[1])
        self.network.metrics.pieces.labels(source).inc()
        self.reporter.add(index, cost=cost, parent=sender)
        self._notify()

    async def _from_origin(self, reason: str) -> None:
        """Fetch the missing pieces from the registry with range requests, waited-for ones first."""
        kind = reason.split(":")[0]
        self.network.metrics.back_to_source.labels(kind).inc()
        log.warning("%s goes back to the origin %s: %s", self.task.digest, self.origin.registry, reason)
        self.reporter.from_origin = True

        def open_range(start: int, length: int) -> Awaitable[CopySource]:
            return self.network.registry.open_blob(self.origin, self.task.digest, (start, length))

        def stored(index: int) -> None:
            self.network.metrics.pieces.labels("origin").inc()
            self.reporter.add(index)

        await RangeFill(self.task, open_range, self.network.origin_copiers,
                        on_bytes=self.network.metrics.bytes.labels("origin").inc, on_piece=stored).run()


@dataclass
class _Arrival:
    """The pieces of one request as they land: each piece's cost is the time since the one before."""

    download: PieceDownload
    source: str  # "seed" or "peer", for the metrics
    sender: str | None  # the parent whose cost the scheduler hears of (None: not reported)
    count: int = 0
    _since: float = field(default_factory=time.monotonic)

    def landed(self, index: int, digest: str) -> None:
        now = time.monotonic()
        cost, self._since = now - self._since, now
        self.count += 1
        self.download._landed(index, digest, self.source, cost if self.sender else None, self.sender)


async def whole_blob_digest(task: Task) -> str:
    """The hex digest of the task's blob, hashed in order as its leading pieces are verified
    (on a worker thread, beside the download), so that little is left at the end: a whole
    reader waits for this check before the last piece."""
    hasher = task.digest.hasher()
    done = 0
    fd = os.open(task.path, os.O_RDONLY)  # held: the file may be renamed, never cut under us
    try:
        while done < task.length:
            end = task.verified_end(done, whole=False)
            if end - done >= HASH_CHUNK or (end > done and end == task.length):  # a thread hop per few MiB
                await asyncio.to_thread(hash_file, fd, end, hasher, done)
                done = end
            else:
                await task.wait_change(1.0)
    finally:
        os.close(fd)
    return hasher.hexdigest()


def registry_name(upstream: str) -> str:
    """The registry NAME a seed trigger carries for an upstream URL: its host[:port] (a seed
    maps names with its own registry map; it is never handed a URL to go to)."""
    return urlsplit(upstream).netloc


def rest_of_run(request: PieceRequest, delivered: int) -> PieceRequest | None:
    """What is left of a run after its first ``delivered`` pieces (None: nothing)."""
    if delivered >= len(request.sizes):
        return None
    return replace(request, index=request.index + delivered, sizes=request.sizes[delivered:],
                   offset=request.offset + sum(request.sizes[:delivered]), digests=request.digests[delivered:])

