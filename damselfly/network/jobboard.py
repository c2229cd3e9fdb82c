"""Where the manager leaves preheat jobs for the schedulers of a cluster, and where their
progress comes back: on Redis with ``--redis``, in this process without (see lib.kv).

Every key expires: a job's payload and progress some minutes after its deadline, a
worker's claim LEASE seconds after its last renewal (so another scheduler takes over a job
whose worker died). Redis that restarts empty loses nothing for good: the manager posts
its active jobs again, and a worker re-running a job finds the hosts already hold what
it placed.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

from damselfly.core.jobs import JobError, JobProgress, PreheatJob
from damselfly.lib.kv import KV

log = logging.getLogger(__name__)
PREFIX = "damselfly:jobs"
LEASE = 15.0  # seconds a worker's claim lasts without renewal
KEEP_AFTER = 600.0  # seconds a job's payload and progress outlive its deadline


class JobBoard:
    def __init__(self, kv: KV, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.clock = clock

    @staticmethod
    def _queue(cluster_id: int) -> str:
        return f"{PREFIX}:{cluster_id}"

    @staticmethod
    def _key(cluster_id: int, job_id: int, part: str) -> str:
        return f"{PREFIX}:{cluster_id}:{job_id}:{part}"

    def _ttl(self, deadline: float) -> float:
        return max(60.0, deadline - self.clock() + KEEP_AFTER)

    async def post(self, job: PreheatJob) -> None:
        """Make ``job`` available to its cluster's workers (again: posting twice is harmless)."""
        await self.kv.put(self._key(job.cluster_id, job.id, "job"), json.dumps(job.to_json()).encode(),
                          self._ttl(job.statement.deadline))
        await self.kv.add(self._queue(job.cluster_id), str(job.id))

    async def posted(self, cluster_id: int, job_id: int) -> bool:
        return await self.kv.get(self._key(cluster_id, job_id, "job")) is not None

    async def pending(self, cluster_id: int) -> list[int]:
        """The jobs of ``cluster_id`` posted, oldest first: one read of the queue, never of the
        payloads (workers look every second); a job whose payload expired leaves the queue
        when a worker tries to claim it."""
        found = []
        for member in await self.kv.members(self._queue(cluster_id)):
            if member.isdigit():
                found.append(int(member))
            else:
                await self.kv.discard(self._queue(cluster_id), member)
        return sorted(found)

    async def claim(self, cluster_id: int, job_id: int, worker: str) -> PreheatJob | None:
        """The job, if ``worker`` now holds its lease (None: another worker does, or it is gone
        or unreadable; an unreadable one is withdrawn)."""
        owner = self._key(cluster_id, job_id, "owner")
        if not await self.kv.put(owner, worker.encode(), LEASE, only_if_absent=True) and \
                await self.kv.get(owner) != worker.encode():
            return None
        payload = await self.kv.get(self._key(cluster_id, job_id, "job"))
        if payload is None:  # expired, or ended: it leaves the queue
            await self.kv.delete(owner)
            await self.kv.discard(self._queue(cluster_id), str(job_id))
            return None
        try:
            job = PreheatJob.from_json(json.loads(payload))
        except (JobError, ValueError) as error:
            log.error("preheat job %d of cluster %d is unreadable (%s): withdrawn", job_id, cluster_id, error)
            await self.withdraw(cluster_id, job_id)
            return None
        if (job.id, job.cluster_id) != (job_id, cluster_id):
            log.error("preheat job %d of cluster %d names job %d of cluster %d: withdrawn", job_id, cluster_id,
                      job.id, job.cluster_id)
            await self.withdraw(cluster_id, job_id)
            return None
        return job

    async def renew(self, cluster_id: int, job_id: int, worker: str) -> bool:
        """Keep the lease; False if it went to another worker meanwhile."""
        owner = self._key(cluster_id, job_id, "owner")
        current = await self.kv.get(owner)
        if current not in (None, worker.encode()):
            return False
        await self.kv.put(owner, worker.encode(), LEASE)
        return True

    async def report(self, job: PreheatJob, progress: JobProgress) -> None:
        await self.kv.put(self._key(job.cluster_id, job.id, "progress"), json.dumps(progress.to_json()).encode(),
                          self._ttl(job.statement.deadline))

    async def progress(self, cluster_id: int, job_id: int) -> JobProgress | None:
        raw = await self.kv.get(self._key(cluster_id, job_id, "progress"))
        if raw is None:
            return None
        try:
            return JobProgress.from_json(json.loads(raw))
        except (JobError, ValueError) as error:
            log.error("progress of preheat job %d of cluster %d is unreadable: %s", job_id, cluster_id, error)
            return None

    async def done(self, job: PreheatJob) -> None:
        """A worker ended the job: no worker takes it again (its progress stays for the manager)."""
        await self.kv.discard(self._queue(job.cluster_id), str(job.id))
        await self.kv.delete(self._key(job.cluster_id, job.id, "job"), self._key(job.cluster_id, job.id, "owner"))

    async def cancel(self, cluster_id: int, job_id: int, deadline: float) -> None:
        await self.kv.put(self._key(cluster_id, job_id, "cancel"), b"1", self._ttl(deadline))

    async def cancelled(self, cluster_id: int, job_id: int) -> bool:
        return await self.kv.get(self._key(cluster_id, job_id, "cancel")) is not None

    async def withdraw(self, cluster_id: int, job_id: int) -> None:
        """Forget the job (the manager recorded how it ended); a cancel stays until it
        expires, for a worker still running it."""
        await self.kv.discard(self._queue(cluster_id), str(job_id))
        await self.kv.delete(*(self._key(cluster_id, job_id, part) for part in ("job", "owner", "progress")))
