"""The job board on both of its stores: in this process, and on a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator

import pytest

from damselfly.core.jobs import JobProgress, Manifest, PreheatJob, Selection, SignedStatement, Statement
from damselfly.lib.kv import MemoryKV, RedisKV, connect
from damselfly.lib.signed import Signature
from damselfly.network.jobboard import LEASE, JobBoard
from testkit.redis import RedisServer

BODY = b"{}"
MANIFEST = Manifest("sha256:" + hashlib.sha256(BODY).hexdigest(), "x", BODY)
STATEMENT = Statement(3, "127.0.0.1:5000", "app", False, 10_000.0, {}, {MANIFEST.digest: "x"}, {"sha256:" + "b" * 64: 10})
JOB = PreheatJob(id=3, cluster_id=2, signed=SignedStatement(STATEMENT, Signature("hmac", "c2ln")),
                 manifests=(MANIFEST,), selection=Selection())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


def run(work):  # one event loop per check: redis-py's client binds to the loop it first ran in
    return asyncio.run(work())


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_job_is_taken_by_one_worker_reported_and_withdrawn(store: str, redis_server: RedisServer) -> None:
    async def work() -> None:
        clock = Clock()
        client = connect(redis_server.url) if store == "redis" else None
        if client is not None:
            await client.flushdb()
        kv = RedisKV(client) if client is not None else MemoryKV(clock)
        board = JobBoard(kv, clock)
        try:
            assert await board.pending(2) == []
            await board.post(JOB)
            await board.post(JOB)  # posting again changes nothing
            assert await board.pending(2) == [3] and await board.pending(1) == []
            assert await board.claim(2, 3, "worker-a") == JOB
            assert await board.claim(2, 3, "worker-b") is None  # the lease is a's
            assert await board.claim(2, 3, "worker-a") == JOB  # a may take it up again
            assert await board.renew(2, 3, "worker-a") and not await board.renew(2, 3, "worker-b")
            await board.report(JOB, JobProgress("RUNNING"))
            assert (await board.progress(2, 3)) == JobProgress("RUNNING")
            assert not await board.cancelled(2, 3)
            await board.cancel(2, 3, JOB.statement.deadline)
            assert await board.cancelled(2, 3)
            await board.done(JOB)
            assert await board.pending(2) == [] and await board.claim(2, 3, "worker-b") is None
            assert (await board.progress(2, 3)) == JobProgress("RUNNING")  # kept for the manager
            await board.withdraw(2, 3)
            assert await board.progress(2, 3) is None
            assert await board.cancelled(2, 3)  # a worker still running it must hear of the cancel
        finally:
            if client is not None:
                await client.aclose()
    run(work)


def test_a_dead_workers_lease_runs_out_and_another_takes_the_job() -> None:
    async def work() -> None:
        clock = Clock()
        board = JobBoard(MemoryKV(clock), clock)
        await board.post(JOB)
        assert await board.claim(2, 3, "worker-a") == JOB
        clock.now += LEASE + 1
        assert await board.claim(2, 3, "worker-b") == JOB
        assert not await board.renew(2, 3, "worker-a")
    run(work)


def test_expired_jobs_leave_the_queue() -> None:
    async def work() -> None:
        clock = Clock()
        kv = MemoryKV(clock)
        board = JobBoard(kv, clock)
        await board.post(JOB)
        clock.now = JOB.statement.deadline + 10_000
        assert await board.pending(2) == [3]  # the queue alone is read: the payload's expiry shows at a claim
        assert await board.claim(2, 3, "worker-a") is None
        assert await board.pending(2) == [] and await kv.members("damselfly:jobs:2") == set()
    run(work)


def test_an_unreadable_job_is_withdrawn_not_run(redis_server: RedisServer) -> None:
    async def work() -> None:
        client = connect(redis_server.url)
        await client.flushdb()
        board = JobBoard(RedisKV(client))
        try:
            await board.post(JOB)
            await client.set("damselfly:jobs:2:3:job", b'{"id": 3, "cluster_id": 2, "blobs": "lies"}')
            assert await board.claim(2, 3, "worker-a") is None
            assert await board.pending(2) == []
            await board.post(JOB)
            await client.delete("damselfly:jobs:2:3:job")  # Redis lost the payload, not the queue
            assert await board.claim(2, 3, "worker-a") is None and await board.pending(2) == []
            await client.sadd("damselfly:jobs:2", "not-a-number")
            assert await board.pending(2) == []
        finally:
            await client.aclose()
    run(work)
