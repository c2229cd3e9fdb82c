"""The scheduler's preheat worker: takes its cluster's jobs from the job board and places
each job's manifests and blobs on the hosts its scope names.

Every scope fills seed peers first (the only hosts that read the registry, with the job's
credentials sealed for each); peers then get each blob through the same P2P task a pull
uses, from the seeds. A host answers a placement once the blob is stored, after its own
digest check. A job ends SUCCESS only when every host in scope holds every part; at its
deadline it ends FAILURE naming what is missing; a cancel stops it from placing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from damselfly.core.jobs import (BlobProgress, HostProgress, HostState, JobProgress, JobState, ManifestPlacement,
                                 Member, Placement, PreheatJob, choose_hosts, missing_summary)
from damselfly.lib.kv import KV_ERRORS
from damselfly.lib.serve import error_of
from damselfly.lib.tls import ClusterTLS
from damselfly.network.jobboard import LEASE, JobBoard

log = logging.getLogger(__name__)
POLL_INTERVAL = 1.0  # how often the board is looked at, and progress reported
PLACEMENTS_PER_JOB = 8  # placements in flight for one job
MAX_ERROR = 300


@dataclass
class _Run:
    """One job as this worker runs it: the progress of each part on each host."""

    job: PreheatJob
    parts: dict[str, BlobProgress]
    state: JobState = "RUNNING"
    error: str | None = None

    def mark(self, digest: str, host_id: str, state: HostState, error: str | None = None) -> None:
        self.parts[digest] = self.parts[digest].with_host(HostProgress(host_id, state, error))

    def progress(self) -> JobProgress:
        return JobProgress(self.state, tuple(self.parts.values()), self.error)

    def failures(self) -> list[str]:
        return [f"{h.host_id}: {h.error}" for part in self.parts.values() for h in part.hosts if h.state == "failed"]


class PreheatWorker:
    def __init__(self, board: JobBoard, members: Callable[[], list[Member]], cluster_id: Callable[[], int | None],
                 worker_id: str, tls: ClusterTLS | None, clock: Callable[[], float] = time.time) -> None:
        self.board = board
        self.members = members
        self.cluster_id = cluster_id
        self.worker_id = f"{worker_id}/{secrets.token_hex(4)}"  # another run of this scheduler is another worker
        self.tls = tls
        self.clock = clock
        self._running: dict[int, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._board_down = False

    async def run(self) -> None:
        """Look for jobs until cancelled; a board that is down is tried again, never fatal."""
        try:
            while True:
                cluster_id = self.cluster_id()
                if cluster_id is not None:
                    await self._take_jobs(cluster_id)
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            for task in self._running.values():
                task.cancel()
            await asyncio.gather(*self._running.values(), return_exceptions=True)
            if self._session is not None:
                await self._session.close()

    async def _take_jobs(self, cluster_id: int) -> None:
        try:
            for job_id in await self.board.pending(cluster_id):
                if job_id in self._running:
                    continue
                job = await self.board.claim(cluster_id, job_id, self.worker_id)
                if job is not None:
                    statement = job.statement
                    log.info("preheat job %d: %d manifests and %d blobs (%d bytes) of %s/%s, scope %s", job.id,
                             len(job.manifests), len(statement.blobs), statement.total_bytes, statement.registry,
                             statement.repository, job.selection.scope)
                    self._running[job_id] = asyncio.create_task(self._run_and_forget(job), name=f"preheat job {job.id}")
            if self._board_down:
                log.info("the job board answers again")
                self._board_down = False
        except KV_ERRORS as error:
            if not self._board_down:
                log.warning("the job board (Redis) cannot be read (%s): jobs wait until it answers", error)
                self._board_down = True

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.tls.client_context() if self.tls else False, limit=64)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _run_and_forget(self, job: PreheatJob) -> None:
        try:
            await self._run(job)
        finally:
            self._running.pop(job.id, None)

    async def _run(self, job: PreheatJob) -> None:
        seeds, peers = choose_hosts(job.selection, self.members())
        hosts = [*seeds, *peers]
        parts = {m.digest: BlobProgress(m.digest, len(m.body), "manifest",
                                        tuple(HostProgress(h.host_id, "pending") for h in hosts))
                 for m in job.manifests}
        parts.update({digest: BlobProgress(digest, size, "blob",
                                           tuple(HostProgress(h.host_id, "pending") for h in hosts))
                      for digest, size in job.statement.blobs.items()})
        run = _Run(job, parts)
        if not seeds:
            run.state, run.error = "FAILURE", "no live seed peer in this cluster to fetch from the registry"
        elif job.statement.private and not (job.sealed.keys() & ({s.host_id for s in seeds} | {"*"})):
            run.state, run.error = "FAILURE", "no seed peer in scope has the job's credentials (sealed for it)"
        elif not await self._watch(run, asyncio.create_task(self._place(run, seeds, peers))):
            log.warning("preheat job %d went to another worker: left to it", job.id)
            return
        log.log(logging.INFO if run.state == "SUCCESS" else logging.WARNING, "preheat job %d: %s%s", job.id,
                run.state, f" ({run.error})" if run.error else "")
        await self._report(run, final=True)

    async def _watch(self, run: _Run, work: asyncio.Task[None]) -> bool:
        """Report progress and keep the lease while ``work`` runs; end it at a cancel or the
        deadline. False if the lease went to another worker (which then runs the job)."""
        job = run.job
        while not work.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(work),
                                       min(POLL_INTERVAL, max(0.01, job.statement.deadline - self.clock())))
            if work.done():
                break
            if self.clock() >= job.statement.deadline:
                run.state, run.error = "FAILURE", f"timed out: {missing_summary(run.progress())}"
                break
            try:
                if await self.board.cancelled(job.cluster_id, job.id):
                    run.state, run.error = "CANCELLED", "cancelled"
                    break
                if not await self.board.renew(job.cluster_id, job.id, self.worker_id):
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    return False
            except KV_ERRORS:
                pass  # the lease lasts LEASE seconds; the work goes on meanwhile
            await self._report(run)
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        if run.state == "RUNNING":
            failures = run.failures()
            if failures:
                run.state = "FAILURE"
                run.error = f"{len(failures)} placements failed; first: {failures[0]}"[:MAX_ERROR]
            else:
                run.state = "SUCCESS"
        return True

    async def _report(self, run: _Run, final: bool = False) -> None:
        try:
            await self.board.report(run.job, run.progress())
            if final:
                await self.board.done(run.job)
        except KV_ERRORS as error:
            if final:  # the manager must hear how it ended: keep trying while the lease would hold
                log.warning("preheat job %d ended %s but the board cannot be written (%s): retrying", run.job.id,
                            run.state, error)
                await self._report_later(run)

    async def _report_later(self, run: _Run) -> None:
        deadline = self.clock() + LEASE * 20
        while self.clock() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                await self.board.report(run.job, run.progress())
                await self.board.done(run.job)
                return
            except KV_ERRORS:
                continue

    async def _place(self, run: _Run, seeds: list[Member], peers: list[Member]) -> None:
        job = run.job
        gate = asyncio.Semaphore(PLACEMENTS_PER_JOB)
        manifests = ManifestPlacement(job.signed, job.manifests)
        if job.manifests:
            await asyncio.gather(*(self._place_manifests(run, host, manifests, gate) for host in [*seeds, *peers]))

        async def one_blob(digest: str) -> None:
            placement = Placement(job.signed)
            await asyncio.gather(*(self._place_blob(run, host, digest, placement, gate) for host in seeds))
            if peers and any(h.state == "done" for h in run.parts[digest].hosts):
                await asyncio.gather(*(self._place_blob(run, host, digest, placement, gate) for host in peers))
            for host in peers:
                if _state_of(run.parts[digest], host.host_id) == "pending":
                    run.mark(digest, host.host_id, "failed", "no seed peer could fetch it")

        await asyncio.gather(*(one_blob(digest) for digest in job.statement.blobs))

    async def _place_manifests(self, run: _Run, host: Member, placement: ManifestPlacement,
                               gate: asyncio.Semaphore) -> None:
        async with gate:
            error = await self._post(f"{host.upload_url}/api/v1/preheat/manifests", placement.to_json(),
                                     run.job.statement.deadline)
        for manifest in placement.manifests:
            run.mark(manifest.digest, host.host_id, "failed" if error else "done", error)

    async def _place_blob(self, run: _Run, host: Member, digest: str, placement: Placement,
                          gate: asyncio.Semaphore) -> None:
        job = run.job
        if host.is_seed and job.statement.private:
            sealed = job.sealed.get(host.host_id) or job.sealed.get("*")
            if sealed is None:
                run.mark(digest, host.host_id, "failed", "the job's credentials were not sealed for this seed peer")
                return
            placement = Placement(job.signed, sealed)
        async with gate:
            run.mark(digest, host.host_id, "fetching")
            error = await self._post(f"{host.upload_url}/api/v1/preheat/blobs/{digest}", placement.to_json(),
                                     job.statement.deadline)
        run.mark(digest, host.host_id, "failed" if error else "done", error)

    async def _post(self, url: str, body: dict[str, Any], deadline: float) -> str | None:
        """None once the host did it, else why not (one line)."""
        try:
            timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - self.clock()))
            async with self.session.post(url, json=body, timeout=timeout) as response:
                if response.status == 200:
                    return None
                text = (await response.content.read(4096)).decode(errors="replace")
                return f"{response.status}: {error_of(text)}"[:MAX_ERROR]
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return f"{type(error).__name__}: {error}"[:MAX_ERROR] if str(error) else type(error).__name__


def _state_of(part: BlobProgress, host_id: str) -> HostState | None:
    return next((h.state for h in part.hosts if h.host_id == host_id), None)

