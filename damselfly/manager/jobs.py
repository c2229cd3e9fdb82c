"""Preheat jobs on the manager's side: resolve the image, seal the credentials for each seed
peer, post one job per cluster on the job board, and record what the schedulers report
until the job ends.

The database holds each job's arguments without credentials and its last known progress,
so a job survives a board (Redis) that is down or restarts empty: the dispatcher posts it
again. Credentials live only in this process's memory, from the request until the job is
posted and then until it ends; a manager that restarts before posting a private job fails
it rather than keep them anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from cryptography.hazmat.primitives.asymmetric import ec

from damselfly.core.jobs import (FINAL_STATES, JobProgress, JobState, PreheatJob, Selection, SignedStatement,
                                 Statement, overall_state)
from damselfly.lib.kv import KV_ERRORS
from damselfly.lib.sealed import seal_for_host
from damselfly.lib.signed import Signer
from damselfly.manager.errors import ApiError
from damselfly.manager.images import Credentials, ResolvedImage, resolve_file, resolve_image
from damselfly.manager.models import Job, JobBlob, JobHost, PreheatArgs
from damselfly.manager.store import Store
from damselfly.network.jobboard import JobBoard

log = logging.getLogger(__name__)
TICK = 1.0  # seconds between looks at the active jobs
CLAIM_GRACE = 30.0  # seconds past its deadline a job's worker has to report how it ended


@dataclass
class _Dispatch:
    """What this process keeps of an active job: its credentials, and what it posted."""

    credentials: Credentials
    args: PreheatArgs
    resolved: ResolvedImage | None = None
    signed: SignedStatement | None = None
    posted: dict[int, PreheatJob] | None = None  # cluster id: the job posted there


class JobDispatcher:
    def __init__(self, store: Store, board: JobBoard, signer: Signer, registries: dict[str, str], tls: bool,
                 seed_keys: dict[str, ec.EllipticCurvePublicKey], clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.board = board
        self.signer = signer  # the hosts act only on what it signed
        self.registries = registries
        self.tls = tls  # credentials travel sealed (False: in clear, loopback deployments only)
        self.seed_keys = seed_keys  # seed peer host id: the public key of its certificate
        self.clock = clock
        self._dispatches: dict[int, _Dispatch] = {}
        self._board_down = False

    def accept(self, job: Job, args: PreheatArgs) -> None:
        """A job just created: keep its credentials until it is posted and ends."""
        self._dispatches[job.id] = _Dispatch(Credentials(args.username, args.password, dict(args.headers)), args)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the dispatcher
                log.exception("preheat jobs could not be advanced; trying again")
            await asyncio.sleep(TICK)

    async def tick(self) -> None:
        active = await asyncio.to_thread(self.store.active_jobs)
        for job_id in set(self._dispatches) - {job.id for job in active}:
            del self._dispatches[job_id]  # ended (cancelled, or by another manager): credentials dropped
        for job in active:
            try:
                await self._advance(job)
            except Exception:  # noqa: BLE001 - one job's surprise must not stall the others
                log.exception("preheat job %d could not be advanced", job.id)
                if self.clock() > self._deadline(job) + CLAIM_GRACE:
                    await self._end(job, "FAILURE", "the manager could not advance the job before its timeout", [])

    def _deadline(self, job: Job) -> float:
        return job.created_at.timestamp() + job.args.timeout

    async def _advance(self, job: Job) -> None:
        dispatch = self._dispatches.get(job.id)
        try:
            if dispatch is None or dispatch.posted is None:
                await self._post(job, dispatch)
            else:
                await self._collect(job, dispatch)
            self._board_down = False
        except KV_ERRORS as error:
            if not self._board_down:
                log.warning("the job board (Redis) cannot be reached (%s): jobs wait until it answers", error)
                self._board_down = True
            if self.clock() > self._deadline(job) + CLAIM_GRACE:
                await self._end(job, "FAILURE", "timed out: the job board (Redis) could not be reached", [])

    async def _post(self, job: Job, dispatch: _Dispatch | None) -> None:
        """Resolve the image and post the job in each of its clusters (once)."""
        if dispatch is None:
            if job.args.private:
                await self._end(job, "FAILURE", "the manager restarted before the job was posted, and credentials "
                                                "are never kept: create the job again", [])
                return
            if job.state == "RUNNING":  # posted by an earlier run of this manager: only its progress is left
                await self._collect(job, None)
                return
            dispatch = self._dispatches[job.id] = _Dispatch(Credentials(), PreheatArgs.model_validate(
                {key: value for key, value in job.args.model_dump().items() if key != "private"}))
        if dispatch.resolved is None:  # once: a board that is down makes the post wait, not the registry ask again
            try:
                dispatch.resolved = await asyncio.to_thread(self._resolve, dispatch.args, dispatch.credentials)
            except ApiError as error:
                await self._end(job, "FAILURE", error.message, [])
                return
        resolved = dispatch.resolved
        if dispatch.signed is None:
            statement = Statement(job.id, resolved.registry, resolved.repository, resolved.private,
                                  self._deadline(job), dict(resolved.tags), {m.digest: m.media_type for m in resolved.manifests},
                                  {blob.digest: blob.size for blob in resolved.blobs})
            dispatch.signed = SignedStatement(statement, self.signer.sign(statement.canonical()))
        posted = {}
        for cluster_id in job.cluster_ids:
            sealed = await self._sealed(cluster_id, resolved, dispatch.signed.statement)
            if sealed is None:
                if self.clock() > self._deadline(job):
                    await self._end(job, "FAILURE", f"no seed peer of cluster {cluster_id} could be given the "
                                                    f"credentials before the timeout", [])
                return  # a seed's key comes with its next keepalive: try again then
            posted[cluster_id] = PreheatJob(job.id, cluster_id, dispatch.signed, resolved.manifests,
                                            Selection(dispatch.args.scope, dispatch.args.count,
                                                      dispatch.args.percentage, tuple(dispatch.args.ips)), sealed)
        for preheat in posted.values():
            await self.board.post(preheat)
        dispatch.posted = posted
        log.info("preheat job %d: %s/%s posted to clusters %s (%d manifests, %d blobs)", job.id, resolved.registry,
                 resolved.repository, ", ".join(map(str, posted)), len(resolved.manifests), len(resolved.blobs))

    def _resolve(self, args: PreheatArgs, credentials: Credentials) -> ResolvedImage:
        """ApiError for anything that goes wrong: a registry's odd answer fails its job only."""
        try:
            if args.type == "file":
                if args.digest is None:
                    raise ApiError(400, "a file preheat needs args.digest")
                return resolve_file(args.url, args.digest, self.registries, credentials)
            return resolve_image(args.url, args.platform, credentials, self.registries)
        except ApiError:
            raise
        except Exception as error:  # noqa: BLE001 - one line for the job, the details for the log
            log.exception("resolving %s failed unexpectedly", args.url)  # checked at creation: no userinfo
            raise ApiError(502, f"the image could not be resolved ({type(error).__name__})") from None

    async def _sealed(self, cluster_id: int, resolved: ResolvedImage, statement: Statement
                      ) -> dict[str, str] | None:
        """The credentials sealed for each seed peer of the cluster, bound to the statement
        ({} for a public image); None while no seed's key is known."""
        if resolved.authorization is None:
            return {}
        if not self.tls:
            return {"*": seal_for_host(resolved.authorization, None, "")}
        seeds = await asyncio.to_thread(self.store.active_seed_peers, cluster_id, datetime.now(timezone.utc))
        sealed = {host: seal_for_host(resolved.authorization, self.seed_keys[host],
                                      statement.credentials_context(host))
                  for host in seeds if host in self.seed_keys}
        return sealed or None

    async def _collect(self, job: Job, dispatch: _Dispatch | None) -> None:
        """Merge what the clusters' workers reported; post again what the board lost."""
        parts: list[JobState] = []
        blobs: list[JobBlob] = []
        errors = []
        for cluster_id in job.cluster_ids:
            progress = await self.board.progress(cluster_id, job.id)
            if progress is None:
                posted = dispatch.posted.get(cluster_id) if dispatch and dispatch.posted else None
                if posted is not None and not await self.board.posted(cluster_id, job.id):
                    log.warning("preheat job %d: the job board lost it (Redis restarted?): posted again", job.id)
                    await self.board.post(posted)
                progress = JobProgress("PENDING")
            parts.append(progress.state)
            if progress.error:
                errors.append(f"cluster {cluster_id}: {progress.error}")
            blobs.extend(JobBlob(digest=b.digest, size=b.size, kind=b.kind, cluster_id=cluster_id,
                                 hosts=[JobHost(host_id=h.host_id, state=h.state, error=h.error) for h in b.hosts])
                         for b in progress.blobs)
        state = overall_state(parts)
        error = "; ".join(errors) or None
        if state not in FINAL_STATES and self.clock() > self._deadline(job) + CLAIM_GRACE:
            state = "FAILURE"
            error = error or ("timed out: no scheduler of the job's clusters took it (do they and the manager share "
                              "one --redis?)" if all(p == "PENDING" for p in parts) else "timed out")
        if state in FINAL_STATES:
            await self._end(job, state, error, blobs)
        elif (state, error, blobs) != (job.state, job.error, job.blobs):  # a write only when something changed
            await asyncio.to_thread(self.store.update_job, job.id, state, error, blobs, datetime.now(timezone.utc))

    async def _end(self, job: Job, state: JobState, error: str | None, blobs: list[JobBlob]) -> None:
        """Record the end; the board forgets the job (or, if it is down, lets it expire)."""
        await asyncio.to_thread(self.store.update_job, job.id, state, error, blobs, datetime.now(timezone.utc))
        self._dispatches.pop(job.id, None)
        with contextlib.suppress(*KV_ERRORS):
            for cluster_id in job.cluster_ids:
                if state != "SUCCESS":
                    await self.board.cancel(cluster_id, job.id, self._deadline(job))
                await self.board.withdraw(cluster_id, job.id)
        log.log(logging.INFO if state == "SUCCESS" else logging.WARNING, "preheat job %d: %s%s", job.id, state,
                f" ({error})" if error else "")

    async def cancel(self, job: Job) -> None:
        """A job cancelled through the API: its workers stop placing, its credentials go."""
        self._dispatches.pop(job.id, None)
        for cluster_id in job.cluster_ids:
            await self.board.cancel(cluster_id, job.id, self._deadline(job))

