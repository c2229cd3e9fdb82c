"""Schedulers in process with a real redis-server: what one learned, another restored from
Redis hands out; a trusted digest is in Redis by the time its report is answered; with
Redis down nothing waits and nothing fails, and once it is back (empty) everything held
is written anew; a Redis emptied under a scheduler's feet is noticed and refilled."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from damselfly.core.pieces import piece_length_for
from damselfly.core.wire import Schedule
from damselfly.lib.kv import connect
from damselfly.scheduler.app import Scheduler
from damselfly.scheduler.holdings import digests_key, holders_key, task_key
from damselfly.settings import SchedulerSettings
from testkit.redis import RedisServer

TASK = "sha256:" + "d" * 64
PIECE = piece_length_for(4 * 256 * 1024)
LENGTH = 4 * PIECE
PIECES = range(4)
PEERS = ("p1", "p2", "p3")


def digest(index: int) -> str:
    return f"blake3:{index + 1:064x}"  # never all zeros: Redis keeps those for "unknown"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


class Api:
    """One scheduler's API as its members call it."""

    def __init__(self, client: TestClient, scheduler: Scheduler) -> None:
        self.client = client
        self.scheduler = scheduler

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        answer = await self.client.post(f"/api/v1/{path}", json=body)
        assert answer.status == 200, await answer.text()
        return await answer.json()

    async def announce(self, host_id: str, seed: bool = False) -> None:
        await self.post("hosts", {"id": host_id, "upload_url": f"http://{host_id}.test:65002", "seed": seed})

    async def register(self, host_id: str, pieces: range | tuple[int, ...] = (), seeding: bool = False) -> Schedule:
        return Schedule.from_json(await self.post(f"tasks/{TASK}/register", {
            "host_id": host_id, "length": LENGTH, "piece_length": PIECE, "pieces": list(pieces), "seeding": seeding}))

    async def pieces(self, host_id: str, indexes: range, from_origin: bool = False) -> None:
        await self.post(f"tasks/{TASK}/pieces", {"host_id": host_id, "from_origin": from_origin,
                                                 "pieces": [[i, digest(i) if from_origin else None]
                                                            for i in indexes]})

    async def done(self, host_id: str) -> None:
        await self.post(f"tasks/{TASK}/done", {"host_id": host_id, "success": True})

    async def task_peers(self) -> tuple[int, Any]:
        answer = await self.client.get(f"/api/v1/tasks/{TASK}/peers")
        return answer.status, await answer.json()

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.scheduler.metrics.registry.get_sample_value(name, labels or {})
        return value or 0.0


async def scheduler_at(server: RedisServer) -> tuple[Api, Any]:
    scheduler = Scheduler(SchedulerSettings(), kv=connect(server.url))
    client = TestClient(TestServer(scheduler.application()))
    await client.start_server()
    return Api(client, scheduler), client


async def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


async def swarm_that_finished(api: Api) -> None:
    """A seed fetched the task from the origin with its digests; three peers hold it whole."""
    await api.announce("seed", seed=True)
    for host_id in PEERS:
        await api.announce(host_id)
    await api.register("seed", seeding=True)
    await api.pieces("seed", PIECES, from_origin=True)
    await api.done("seed")
    for host_id in PEERS:
        await api.register(host_id)
        await api.pieces(host_id, PIECES)
        await api.done(host_id)


def test_a_new_scheduler_hands_out_the_holders_another_one_knew(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        old, old_client = await scheduler_at(redis_server)
        try:
            await swarm_that_finished(old)
            await until(lambda: old.metric("damselfly_scheduler_holdings_pending") == 0
                        and old.metric("damselfly_scheduler_holdings_behind") == 0, 5, "the writes")
        finally:
            await old_client.close()
        new, new_client = await scheduler_at(redis_server)
        try:
            status, peers = await new.task_peers()  # the manager's question, before anyone registered
            assert status == 200
            assert sorted(p["host_id"] for p in peers) == sorted(["seed", *PEERS])
            assert all(p["done"] and p["pieces"] == 4 == p["piece_count"] for p in peers)
            assert TASK not in new.scheduler.state.tasks  # that question loaded nothing

            started = time.perf_counter()
            answer = await new.register("p4")
            took = time.perf_counter() - started
            assert answer.action == "download", answer.reason
            assert {p.host_id for p in answer.parents} <= {"seed", *PEERS} and len(answer.parents) == 4
            assert not any(p.is_seed for p in answer.parents)  # a seed's role comes only from its own announce
            assert answer.digests == {i: digest(i) for i in PIECES} and answer.verified
            assert new.metric("damselfly_scheduler_holdings_restores_total", {"result": "restored"}) == 1
            assert took < 0.5, f"the restore took {took:.3f}s"
            # Its announce makes the seed a seed again.
            await new.announce("seed", seed=True)
            assert new.scheduler.state.hosts["seed"].is_seed
        finally:
            await new_client.close()

    asyncio.run(scenario())


def test_a_trusted_digest_is_in_redis_when_its_report_is_answered(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        api, client = await scheduler_at(redis_server)
        try:
            await api.announce("seed", seed=True)
            await api.register("seed", seeding=True)
            await api.pieces("seed", range(2), from_origin=True)  # before the first write is due
            packed = redis_server.client().get(digests_key(TASK, LENGTH))
            assert packed == bytes.fromhex(digest(0)[7:] + digest(1)[7:])
            assert redis_server.client().hgetall(task_key(TASK)) == {str(LENGTH).encode(): str(PIECE).encode()}
        finally:
            await client.close()

    asyncio.run(scenario())


def test_with_redis_down_nothing_waits_and_it_catches_up_when_it_is_back_empty(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        api, client = await scheduler_at(redis_server)
        try:
            await api.announce("seed", seed=True)
            await until(lambda: api.metric("damselfly_scheduler_holdings_catch_ups_total") == 1, 5,
                        "the first contact with Redis")
            redis_server.stop()
            started = time.perf_counter()
            await swarm_that_finished(api)  # registers, reports, done: none waits for Redis
            assert time.perf_counter() - started < 1.0
            await until(lambda: api.metric("damselfly_scheduler_holdings_write_failures_total") >= 1, 5,
                        "a failed write")
            assert api.metric("damselfly_scheduler_holdings_behind") == 1
            assert api.metric("damselfly_scheduler_holdings_restores_total", {"result": "unavailable"}) == 1
            status, _ = await api.task_peers()
            assert status == 200

            redis_server.start()  # the same port, nothing kept
            await until(lambda: api.metric("damselfly_scheduler_holdings_behind") == 0, 10, "the catch-up")
            assert api.metric("damselfly_scheduler_holdings_catch_ups_total") == 2
            members = {m.decode() for m in redis_server.client().smembers(holders_key(TASK))}
            assert members == {f"{LENGTH} {h}" for h in ("seed", *PEERS)}
            assert len(redis_server.client().hgetall(task_key(TASK))) == 2  # piece length, verified
            assert len(redis_server.client().get(digests_key(TASK, LENGTH)) or b"") == 4 * 32

            redis_server.client().flushall()  # emptied without a connection lost: the marker tells
            await api.announce("p4")
            await until(lambda: api.metric("damselfly_scheduler_holdings_catch_ups_total") == 3, 5,
                        "the catch-up after Redis lost its data")
            assert redis_server.client().scard(holders_key(TASK)) == 4
        finally:
            await client.close()

    asyncio.run(scenario())
