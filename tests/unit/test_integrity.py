"""Every node checks the whole blob itself: pieces that matched a liar's digests are not the
blob; a whole reader never gets the last byte first; a seed's digests reach the scheduler
before its pieces reach anyone."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from damselfly.core.oci import Digest
from damselfly.network import swarm as network_module
from damselfly.network.fetch import PieceRequest
from damselfly.network.metrics import PeerMetrics
from damselfly.network.swarm import Network, Reporter, registry_name, whole_blob_digest
from damselfly.core.pieces import piece_digest
from damselfly.storage.task import Task, TaskFailed
from damselfly.network.scheduler_client import SchedulerUnavailable
from damselfly.core.wire import SeedInfo, SeedTrigger
from testkit.wait import free_port

PIECE = 1024
BLOB = bytes(range(256)) * 12  # three pieces, the last one short
DIGEST = Digest.parse("sha256:" + hashlib.sha256(BLOB).hexdigest())


class FakeScheduler:
    """Stands in for the scheduler client: answers each path from ``answers``, records the calls."""

    host = SimpleNamespace(id="peer-1", upload_url="http://127.0.0.1:7003")

    def __init__(self, answers: dict[str, Any] | None = None, down: bool = False) -> None:
        self.answers = answers or {}
        self.down = down
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, task: str, method: str, path: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        self.calls.append((path, kwargs.get("json") or {}))
        if self.down:
            raise SchedulerUnavailable("down")
        if path == "schedule":
            await asyncio.sleep(0.05)  # a long poll, short
        return "scheduler", {"status": 200, **self.answers.get(path, {})}


def network_with(scheduler: FakeScheduler, **kwargs: Any) -> Network:
    return Network(scheduler, None, PeerMetrics(CollectorRegistry()), is_seed=False, **kwargs)  # type: ignore[arg-type]


def new_task(tmp_path: Path, data: bytes = BLOB) -> Task:
    path = tmp_path / "data"
    path.write_bytes(b"\0" * len(data))
    return Task(DIGEST, len(data), path, piece_length=PIECE)


def test_a_whole_reader_waits_for_this_nodes_check_and_a_range_reader_does_not(tmp_path):
    async def scenario() -> None:
        task = new_task(tmp_path)
        for index in range(3):
            task.piece_done(index)
        assert task.verified_end(0) == 2 * PIECE, "whole readers: the last piece is held"
        assert task.verified_end(0, whole=False) == len(BLOB), "range readers: it matched its piece digest"
        assert task.verified_end(2 * PIECE + 5, whole=False) == len(BLOB)
        assert await task.readable_end(2 * PIECE, 1, whole=False) == len(BLOB)
        with pytest.raises(TaskFailed, match="no progress"):
            await task.readable_end(2 * PIECE, 0.2)
        task.release_last()
        assert await task.readable_end(2 * PIECE, 1) == len(BLOB)

    asyncio.run(scenario())


def test_the_whole_blob_is_hashed_in_order_as_its_leading_pieces_land(tmp_path, monkeypatch):
    spans: list[tuple[int, int]] = []
    real = network_module.hash_file

    def recorded(fd: int, end: int, hasher: Any, start: int = 0) -> None:
        spans.append((start, end))
        real(fd, end, hasher, start)

    monkeypatch.setattr(network_module, "hash_file", recorded)
    monkeypatch.setattr(network_module, "HASH_CHUNK", PIECE)

    async def scenario() -> str:
        task = new_task(tmp_path)
        task.path.write_bytes(BLOB)
        checking = asyncio.create_task(whole_blob_digest(task))
        for index in (1, 0):  # out of order: nothing to hash until piece 0 is in
            task.piece_done(index)
            await asyncio.sleep(0.05)
        assert spans == [(0, 2 * PIECE)], "the two leading pieces, hashed before the last one came"
        task.piece_done(2)
        return await asyncio.wait_for(checking, 5)

    assert asyncio.run(scenario()) == DIGEST.hex
    assert spans == [(0, 2 * PIECE), (2 * PIECE, len(BLOB))]


class LyingFetcher:
    """A parent whose pieces match the digests it (or its scheduler) gave, but are not the blob."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def fetch(self, request: PieceRequest, landed: Callable[[int, str], None]) -> int:
        offset = request.offset
        with open(request.file, "r+b") as f:
            for position, size in enumerate(request.sizes):
                f.seek(offset)
                f.write(self.data[offset:offset + size])
                landed(request.index + position, piece_digest(self.data[offset:offset + size]))
                offset += size
        return len(request.sizes)


def test_pieces_that_matched_a_liars_digests_are_not_committed_and_the_liar_is_reported(tmp_path):
    lie = bytes(reversed(BLOB))
    digests = {str(i): piece_digest(lie[i * PIECE:(i + 1) * PIECE]) for i in range(3)}
    schedule = {"action": "download", "version": 1, "epoch": "e", "verified": True, "swarm": 1, "digests": digests,
                "parents": [{"host_id": "liar", "upload_url": "http://127.0.0.1:7009", "is_seed": True,
                             "seeding": False, "bitmap": "Bw=="}]}
    scheduler = FakeScheduler({"register": schedule, "schedule": schedule})

    async def scenario() -> tuple[str, Network, Task]:
        network = network_with(scheduler)
        network.fetcher = LyingFetcher(lie)  # type: ignore[assignment]
        task = new_task(tmp_path)
        origin = SimpleNamespace(registry="http://127.0.0.1:5000", repository="r", authorization=None)
        actual = await asyncio.wait_for(network.download(task, origin), 10)  # type: ignore[arg-type]
        network.finished(task, success=False, reason="digest mismatch")
        await network.settled()
        network.origin_copiers.shutdown()
        return actual, network, task

    actual, network, task = asyncio.run(scenario())
    assert actual == hashlib.sha256(lie).hexdigest() != DIGEST.hex, "the scheduler's `verified` replaced no check"
    assert not task.bitmap.has(2), "no whole reader got the last piece"
    assert network.metrics.blob_digest_failures._value.get() == 1
    done = [body for path, body in scheduler.calls if path == "done"]
    assert len(done) == 1 and done[0]["success"] is False and done[0]["digest_mismatch"] is True
    assert not any("origin" in body for path, body in scheduler.calls if path == "register"), "no credentials"


def test_a_seed_reports_a_pieces_digest_before_it_serves_the_piece(tmp_path):
    scheduler = FakeScheduler({"pieces": {"rejected": []}})

    async def scenario() -> float:
        network = network_with(scheduler)
        task = new_task(tmp_path)
        reporter = Reporter(network, task, None, from_origin=True)  # type: ignore[arg-type]
        network._reporters[str(DIGEST)] = reporter
        task.digests[0] = "blake3:" + "1" * 64
        reporter.add(0)
        started = time.monotonic()
        await network.reported(str(DIGEST), range(0, 1))
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    reports = [body for path, body in scheduler.calls if path == "pieces"]
    assert reports and reports[0]["pieces"][0][:2] == [0, "blake3:" + "1" * 64]
    assert waited < network_module.REPORT_INTERVAL, "sent at once, not with the next batch"


def test_a_scheduler_that_cannot_be_reached_does_not_hold_a_seeds_pieces(tmp_path):
    async def scenario() -> bool:
        network = network_with(FakeScheduler(down=True))
        task = new_task(tmp_path)
        reporter = Reporter(network, task, None, from_origin=True)  # type: ignore[arg-type]
        task.digests[1] = "blake3:" + "2" * 64
        reporter.add(1)
        return await reporter.confirm(range(1, 2), 5)

    assert asyncio.run(scenario()) is True


def test_the_registry_goes_to_a_seed_by_name_never_as_a_url():
    assert registry_name("http://127.0.0.1:5000") == "127.0.0.1:5000"
    assert registry_name("https://registry-1.docker.io") == "registry-1.docker.io"


async def _seeds(answers: list[int]) -> tuple[list[str], list[dict[str, Any]], web.AppRunner]:
    """Seeds on loopback that answer a trigger with ``answers[i]``; their URLs and what they got."""
    got: list[dict[str, Any]] = []
    urls = []
    app = web.Application()

    def handler(status: int) -> Callable[[web.Request], Any]:
        async def seed(request: web.Request) -> web.Response:
            got.append({"seed": request.path.split("/")[1], **await request.json()})
            return web.json_response({"accepted": request.match_info["digest"]}, status=status)
        return seed

    for index, status in enumerate(answers):
        app.router.add_post(f"/{index}/api/v1/seed/{{digest}}", handler(status))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    urls = [f"http://127.0.0.1:{port}/{i}" for i in range(len(answers))]
    return urls, got, runner


@pytest.mark.parametrize(("answers", "accepted"), [([503, 202], True), ([409, 400], False)])
def test_a_peer_asks_the_listed_seeds_in_order_with_its_callers_credentials(tmp_path, answers, accepted):
    scheduler = FakeScheduler()

    async def scenario() -> tuple[SeedInfo | None, list[dict[str, Any]]]:
        urls, got, runner = await _seeds(answers)
        try:
            network = network_with(scheduler)
            task = new_task(tmp_path)
            origin = SimpleNamespace(registry="http://127.0.0.1:5000", repository="team/app",
                                     authorization="Bearer secret")
            seeds = tuple(SeedInfo(f"seed-{i}", url) for i, url in enumerate(urls))
            result = await network.trigger_seeds(task, origin, seeds)  # type: ignore[arg-type]
            await network.settled()
            await network.close()
            return result, got
        finally:
            await runner.cleanup()

    result, got = asyncio.run(scenario())
    assert (result is not None and result.host_id == "seed-1") is accepted, "the seed that took it, or None"
    assert [g["seed"] for g in got] == ["0", "1"]
    trigger = SeedTrigger.from_json(got[0])
    assert (trigger.registry, trigger.repository, trigger.authorization) == ("127.0.0.1:5000", "team/app",
                                                                          "Bearer secret")
    failed = [body["seed_id"] for path, body in scheduler.calls if path == "trigger-failed"]
    assert failed == (["seed-0"] if accepted else ["seed-0", "seed-1"])


def test_with_a_cluster_identity_credentials_never_go_to_a_plain_http_seed(tmp_path):
    scheduler = FakeScheduler()

    async def scenario() -> tuple[SeedInfo | None, list[dict[str, Any]]]:
        urls, got, runner = await _seeds([202])
        try:
            network = network_with(scheduler)
            network.tls = SimpleNamespace()  # type: ignore[assignment]  # no context is made for a plain http seed
            origin = SimpleNamespace(registry="https://r.example", repository="a", authorization="Bearer x")
            seeds = (SeedInfo("seed-0", urls[0]),)
            result = await network.trigger_seeds(new_task(tmp_path), origin, seeds)  # type: ignore[arg-type]
            await network.settled()
            await network.close()
            return result, got
        finally:
            await runner.cleanup()

    result, got = asyncio.run(scenario())
    assert result is None and got == []
    assert [body["reason"] for path, body in scheduler.calls if path == "trigger-failed"][0].endswith("in clear")
