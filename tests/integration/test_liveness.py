"""A seed killed mid-download, again and again: no peer may stall on parents that cannot give
what it lacks, and none may be cut off.

Reproduced before the fix in 2 runs of 7 (120 MiB, four peers, seed killed with -9): one
peer long-polled the scheduler for 80 s with the same useless parents, and its client was
cut off at 60 s. Here: a small blob per round on a throttled origin, a kept cluster (one
scheduler, four peers) and a new seed each round, killed while it serves. Rounds overlap
(the next starts once the seed is dead), so that twenty fit in a few minutes even though a
round whose peers lack pieces nobody holds waits out the 15 s rule. With and without TLS:
with it, seed triggers and piece transfers go over mutual TLS.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from testkit.cluster import SchedulerProcess, start_peer
from testkit.processes import metric
from testkit.wait import wait_until
from tests.support.fakes import ThrottledRegistryFake

MiB = 1024 * 1024
ROUNDS = 20
PEERS = 4
BLOB_SIZE = 3 * MiB
ORIGIN_RATE = 3 * MiB  # bytes per second, per connection: the seed needs about a second
NO_PARENT_DEADLINE = 15.0  # the README's promise: the registry after 15 s without a serving parent
TRANSFER = BLOB_SIZE / ORIGIN_RATE
# Each client's whole download, from its request: the 15 s run from a peer's last progress,
# which may come a few seconds in (a later round's seed, asked for this task, serves a little
# and is killed too), then the missing pieces from the throttled origin, on two busy cores.
# Before the fix a stalled peer waited 80 s, and its client was cut off at 60.
BOUND = NO_PARENT_DEADLINE + 10 * TRANSFER + 5
TEST_BUDGET = 300.0


@dataclass
class Download:
    round: int
    peer: int
    took: float | None = None
    error: str | None = None


def _fetch(url: str, ns: str, name: str, digest: str, data: bytes, record: Download) -> Download:
    started = time.monotonic()
    try:
        response = httpx.get(f"{url}/v2/{name}/blobs/{digest}", params={"ns": ns}, timeout=90)
        if response.status_code != 200:
            record.error = f"status {response.status_code}: {response.text[:200]}"
        elif response.content != data:
            record.error = f"wrong bytes: {len(response.content)} of {len(data)}"
        else:
            record.took = time.monotonic() - started
    except httpx.HTTPError as exc:  # a response cut short
        record.error = f"{exc.__class__.__name__}: {exc}"
    return record


def _log(scheduler: SchedulerProcess) -> str:
    return (scheduler.workdir / f"scheduler-{scheduler.port}.log").read_text(errors="replace")


@pytest.fixture(params=["plain", "tls"])
def cluster(tmp_path: Path, request):
    """Without TLS (a loopback-only deployment) and with (every link mutual TLS)."""
    origin = ThrottledRegistryFake(ORIGIN_RATE).start()
    started: list = []
    try:
        scheduler = SchedulerProcess(tmp_path / "sch", tls=request.param == "tls").start()
        started.append(scheduler)
        mapping = ["--registry", f"{origin.host}=http://{origin.host}"]
        peers = [start_peer(tmp_path / f"peer{i}/data", [scheduler.url], mapping) for i in range(PEERS)]
        started.extend(peers)
        yield origin, scheduler, peers, mapping
    finally:
        for process in reversed(started):
            process.stop()
        origin.stop()


def test_a_seed_killed_mid_download_never_stalls_its_peers(tmp_path, cluster):
    origin, scheduler, peers, mapping = cluster
    began = time.monotonic()
    downloads: list[Future[Download]] = []
    seeds = []
    with ThreadPoolExecutor(ROUNDS * PEERS) as pool:
        for round_ in range(ROUNDS):
            assert time.monotonic() - began < TEST_BUDGET - BOUND, f"only {round_} rounds started in time"
            data = os.urandom(BLOB_SIZE)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            origin.blobs[digest] = data
            seed = start_peer(tmp_path / f"seed{round_}/data", [scheduler.url], mapping, seed=True)
            seeds.append(seed)
            wait_until(lambda seed=seed: f"host seed-{seed.upload_port} joined" in _log(scheduler), 20,
                       "the new seed to announce itself")
            name = f"live/round{round_}"
            for index, peer in enumerate(peers):  # all at about the same moment: a stampede
                record = Download(round_, index)
                downloads.append(pool.submit(_fetch, peer.url, origin.host, name, digest, data, record))
            # Killed while it serves: some pieces are out, others never will be.
            wait_until(lambda seed=seed: metric(seed.url, "damselfly_upload_bytes_total") >= BLOB_SIZE // 4, 30,
                       f"round {round_}: the seed to serve a quarter of the blob")
            os.kill(seed.process.pid, signal.SIGKILL)
            seed.process.wait(10)
        results = [d.result(timeout=max(1.0, began + TEST_BUDGET - time.monotonic())) for d in downloads]
    elapsed = time.monotonic() - began
    failed = [r for r in results if r.error is not None]
    slow = [r for r in results if r.took is not None and r.took > BOUND]
    took = sorted(r.took for r in results if r.took is not None)
    print(f"{ROUNDS} rounds in {elapsed:.0f}s; downloads took {took[0]:.1f}..{took[-1]:.1f}s "
          f"(median {took[len(took) // 2]:.1f}s); back to source "
          f"{sum(p.metric('damselfly_p2p_back_to_source_total') for p in peers):.0f} times")
    assert not failed, f"cut short or wrong: {failed}"
    assert not slow, f"stalled beyond {BOUND:.0f}s: {slow}"
    assert len(results) == ROUNDS * PEERS and elapsed < TEST_BUDGET
    for seed in seeds:
        assert seed.process.returncode == -signal.SIGKILL
