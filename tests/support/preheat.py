"""A preheat cluster for tests: a real redis-server, a manager and a scheduler sharing it,
a seed peer and peers, all over mutual TLS, mapping the registries a test module brings;
and the few calls every preheat test makes on the manager's jobs API.

The manager tells members to keep alive every 0.2 s (default 5 s), so that joins show fast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from testkit.cluster import SchedulerProcess, start_peer
from testkit.daemon import Damselfly
from testkit.manager import Manager
from testkit.redis import RedisServer
from testkit.tls import tls_dir
from testkit.wait import wait_until

FAST = ["--keepalive-interval", "0.2", "--inactive-after", "2"]
FINAL = ("SUCCESS", "FAILURE", "CANCELLED")
WAIT = 60


@dataclass
class Members:
    tmp: Path
    redis: RedisServer
    manager: Manager
    scheduler: SchedulerProcess
    seed: Damselfly
    peers: list[Damselfly]

    def root(self) -> httpx.Client:
        return self.manager.root()

    def scheduler_log(self) -> str:
        return (self.scheduler.workdir / f"scheduler-{self.scheduler.port}.log").read_text()


@contextmanager
def preheat_members(tmp: Path, registry_hosts: list[str], peers: int, seed_args: tuple[str, ...] = ()
                    ) -> Iterator[Members]:
    """The cluster, every member registered and known to the scheduler; all stopped after."""
    started: list[Any] = []
    try:
        redis = RedisServer().start()
        started.append(redis)
        mapping = [arg for host in registry_hosts for arg in ("--registry", f"{host}=http://{host}")]
        manager = Manager(tmp / "manager", args=[*FAST, "--redis", redis.url, *mapping],
                          tls_dir=tls_dir("preheat-manager", "manager")).start()
        started.append(manager)
        scheduler = SchedulerProcess(tmp / "scheduler", tls=True,
                                     extra=["--manager", manager.url, "--redis", redis.url]).start()
        started.append(scheduler)
        member = ["--manager", manager.url]
        seed = start_peer(tmp / "seed" / "data", [scheduler.url], mapping, seed=True, extra=[*member, *seed_args])
        started.append(seed)
        found = [start_peer(tmp / f"peer{i}" / "data", [scheduler.url], mapping, extra=member) for i in range(peers)]
        started += found
        members = Members(tmp, redis, manager, scheduler, seed, found)
        with members.root() as root:
            wait_until(lambda: len(root.get("/seed-peers", params={"state": "active"}).json()) == 1
                       and len(root.get("/peers", params={"state": "active"}).json()) == peers, WAIT, "the members")
        wait_until(lambda: scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == peers + 1, WAIT,
                   "the scheduler knowing the seed and every peer")
        yield members
    finally:
        for thing in reversed(started):
            thing.close() if isinstance(thing, RedisServer) else thing.stop()


def preheat(root: httpx.Client, **args: Any) -> dict[str, Any]:
    answer = root.post("/jobs", json={"type": "preheat", "args": {"type": "image", **args}})
    assert answer.status_code == 201, answer.text
    assert answer.json()["state"] == "PENDING"
    return dict(answer.json())


def ended(root: httpx.Client, job: dict[str, Any], timeout: float = WAIT) -> dict[str, Any]:
    return wait_until(lambda: (found := root.get(f"/jobs/{job['id']}").json())["state"] in FINAL and found,
                      timeout, f"job {job['id']} to end")
