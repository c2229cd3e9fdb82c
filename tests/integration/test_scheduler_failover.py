"""Schedulers lose nothing, on real processes: two schedulers sharing a real redis-server, a
manager, a seed, six peers and a throttled registry.

Six peers fetch a cold blob; mid-download the scheduler that owns its task is killed (the
task moves to the other one on the ring), or Redis restarts and loses everything. Either
way the registry sends the blob once, no peer goes to it, and every peer gets the right
bytes. Then the owner is restarted with an empty memory: within 5 s a seventh peer gets the
blob from the six (the seed is gone by then, and the restarted scheduler never hands out
the seed list), and the manager's task search lists them, as the restarted scheduler reads
them from Redis."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from damselfly.lib.hashring import HashRing
from testkit.cluster import SchedulerProcess, start_peer
from testkit.daemon import Damselfly
from testkit.manager import Manager
from testkit.redis import RedisServer
from testkit.wait import wait_until
from tests.support.fakes import ThrottledRegistryFake

MiB = 1024 * 1024
BLOB = 16 * MiB
ORIGIN_RATE = 4 * MiB  # per second: the seed reads the blob in about 4 s
PEERS = 6
RESTART_BOUND = 5.0  # the promise: a peer gets the blob from its holders within 5 s of a restart
FAST = ["--keepalive-interval", "0.2", "--inactive-after", "2"]  # the manager sees members come and go at once


@dataclass
class Cluster:
    origin: ThrottledRegistryFake
    redis: RedisServer
    manager: Manager
    owner: SchedulerProcess  # the scheduler that owns the blob's task on the ring
    other: SchedulerProcess
    seed: Damselfly
    peers: list[Damselfly]
    data: bytes
    digest: str
    workdir: Path

    @property
    def schedulers(self) -> list[str]:
        return [self.owner.url, self.other.url]

    def peer(self, name: str) -> Damselfly:
        return start_peer(self.workdir / name / "data", self.schedulers,
                          ["--registry", f"{self.origin.host}=http://{self.origin.host}"])

    def fetch(self, node: Damselfly) -> bytes:
        answer = httpx.get(f"{node.url}/v2/failover/blob/blobs/{self.digest}", params={"ns": self.origin.host},
                           timeout=90)
        assert answer.status_code == 200, answer.text[:300]
        return answer.content


def owned_blob(owner: str, schedulers: list[str]) -> tuple[bytes, str]:
    """A random blob whose task ``owner`` holds on the ring of ``schedulers``."""
    while True:
        data = os.urandom(BLOB)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if HashRing(schedulers).owners(digest)[0] == owner:
            return data, digest


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started: list[Any] = []
    origin = ThrottledRegistryFake(ORIGIN_RATE).start()
    redis = RedisServer().start()
    try:
        manager = Manager(tmp_path / "manager", args=[*FAST, "--redis", redis.url]).start()
        started.append(manager)
        members = ["--manager", manager.url, "--redis", redis.url]
        owner, other = (SchedulerProcess(tmp_path / f"sch{i}", extra=members).start() for i in range(2))
        started += [owner, other]
        data, digest = owned_blob(owner.url, [owner.url, other.url])
        origin.blobs[digest] = data
        mapping = ["--registry", f"{origin.host}=http://{origin.host}"]
        seed = start_peer(tmp_path / "seed/data", [owner.url, other.url], mapping, seed=True)
        started.append(seed)
        with ThreadPoolExecutor(PEERS) as pool:
            peers = list(pool.map(lambda i: start_peer(tmp_path / f"peer{i}/data", [owner.url, other.url], mapping),
                                  range(PEERS)))
        started += peers
        yield Cluster(origin, redis, manager, owner, other, seed, peers, data, digest, tmp_path)
    finally:
        for process in reversed(started):
            process.stop()
        redis.close()
        origin.stop()


def p2p(node: Damselfly, source: str) -> float:
    return node.metric("damselfly_p2p_bytes_total", f'source="{source}"')


def holders_by_scheduler(cluster: Cluster, scheduler: SchedulerProcess) -> set[str]:
    """The done holders ``scheduler`` tells of, and that the manager's task search lists
    (one row a host, whichever scheduler told it)."""
    with scheduler.client() as client:
        told = client.get(f"/api/v1/tasks/{cluster.digest}/peers")
    assert told.status_code == 200, told.text
    with cluster.manager.root() as root:
        answer = root.get("/tasks", params={"digest": cluster.digest})
    assert answer.status_code == 200, answer.text
    listed = {p["host_id"] for p in answer.json()["blobs"][0]["peers"] if p["done"]}
    return {p["host_id"] for p in told.json() if p["done"]} & listed


@pytest.mark.parametrize("fault", ["owner-killed", "redis-restarted"])
def test_a_fault_mid_download_then_a_restarted_scheduler_hands_out_the_holders(cluster: Cluster, fault: str) -> None:
    owner, other, peers = cluster.owner, cluster.other, cluster.peers
    with ThreadPoolExecutor(PEERS) as pool:
        fetches = [pool.submit(cluster.fetch, peer) for peer in peers]
        wait_until(lambda: sum(p2p(peer, "seed") for peer in peers) > 0, 30, "the first pieces from the seed")
        assert cluster.origin.sent < BLOB, "the registry must still be sending"
        if fault == "owner-killed":
            owner.stop(kill=True)
        else:
            cluster.redis.restart()
        results = [fetch.result(timeout=90) for fetch in fetches]
    assert all(result == cluster.data for result in results)
    assert cluster.origin.sent <= 1.02 * BLOB  # the registry sent the blob once
    for peer in peers:
        assert peer.metric("damselfly_p2p_back_to_source_total") == 0
        assert p2p(peer, "origin") == 0
    for process in (other, cluster.seed, *peers, cluster.manager):
        assert process.process is not None and process.process.poll() is None, "nothing crashed"

    # What the surviving scheduler wrote is in Redis (after a Redis restart: written anew).
    writer = other if fault == "owner-killed" else owner
    if fault == "redis-restarted":
        assert owner.metric("damselfly_scheduler_holdings_catch_ups_total") >= 2
    wait_until(lambda: writer.metric("damselfly_scheduler_holdings_pending") == 0
               and writer.metric("damselfly_scheduler_holdings_behind") == 0, 10, "the writes to Redis")
    cluster.seed.stop()  # from here on, only the six hold the blob
    if fault == "redis-restarted":
        owner.stop(kill=True)
    origin_sent = cluster.origin.sent

    owner.start()  # the same port: the owner again on every ring, with nothing in memory
    restarted = time.monotonic()
    assert holders_by_scheduler(cluster, owner) >= {f"peer-{peer.upload_port}" for peer in peers}
    seventh = cluster.peer("peer7")
    try:
        assert cluster.fetch(seventh) == cluster.data
        took = time.monotonic() - restarted
        assert took < RESTART_BOUND, f"the seventh peer had the blob {took:.1f}s after the restart"
        assert p2p(seventh, "peer") == BLOB, "every piece from the six"
        assert p2p(seventh, "seed") == p2p(seventh, "origin") == 0
        assert owner.metric("damselfly_scheduler_holdings_restores_total", 'result="restored"') >= 1
        assert owner.metric("damselfly_scheduler_seed_triggers_total", 'result="leased"') == 0
        assert owner.metric("damselfly_scheduler_schedules_total", 'action="download"') >= 1
        assert cluster.origin.sent == origin_sent
    finally:
        seventh.stop()
