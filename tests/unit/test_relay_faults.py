"""A peer that a seed pointed at and that sends wrong bytes: the run comes from the seed,
and the peer is reported to the scheduler (by its upload URL, or as a parent it also is)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from damselfly.core.oci import Digest
from damselfly.network.fetch import PieceCorrupt, PieceRelayed, PieceRequest
from damselfly.network.metrics import PeerMetrics
from damselfly.network.policy import Parent
from damselfly.network.swarm import Network, PieceDownload, _Arrival
from damselfly.core.pieces import PieceBitmap
from damselfly.storage.task import Task

SEED, LIAR = "http://127.0.0.1:7001", "http://127.0.0.1:7002"
PIECE = 256 * 1024


class FakeScheduler:
    """Stands in for the scheduler client: remembers what the peer tells it."""

    host = SimpleNamespace(id="child-1", upload_url="http://127.0.0.1:7003")

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, task: str, method: str, path: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        self.calls.append((path, kwargs.get("json") or {}))
        return "scheduler", {}


class FakeFetcher:
    """The pointed-at peer's bytes fail their digest; the seed's arrive."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int, int]] = []

    async def fetch(self, request: PieceRequest, landed: Callable[[int, str], None]) -> None:
        self.asked.append((request.parent_url, request.index, len(request.sizes)))
        if request.parent_url == LIAR:
            raise PieceCorrupt(f"piece {request.index} does not match its digest")
        for offset in range(len(request.sizes)):
            landed(request.index + offset, f"sha256:{request.index + offset:064x}")


class FakeReporter:
    def add(self, index: int, cost: float | None = None, parent: str | None = None) -> None:
        pass


def _relay_corrupt(tmp_path: Path, liar_is_a_parent: bool, times: int = 1
                   ) -> tuple[PieceDownload, FakeScheduler, FakeFetcher]:
    async def scenario() -> tuple[PieceDownload, FakeScheduler, FakeFetcher]:
        scheduler, fetcher = FakeScheduler(), FakeFetcher()
        network = Network(scheduler, None, PeerMetrics(CollectorRegistry()), is_seed=False)  # type: ignore[arg-type]
        network.fetcher = fetcher  # type: ignore[assignment]
        task = Task(Digest.parse("sha256:" + "ab" * 32), 4 * PIECE, tmp_path / "data")
        download = PieceDownload(network, task, None, FakeReporter())  # type: ignore[arg-type]
        if liar_is_a_parent:
            download.parents["liar-1"] = Parent("liar-1", LIAR, is_seed=False, seeding=False, bitmap=PieceBitmap(4))
        request = PieceRequest(SEED, str(task.digest), 0, (PIECE, PIECE, PIECE), task.path, 0, (None, None, None),
                               trust_sent_digest=True, receiver=scheduler.host.upload_url)
        relay = PieceRelayed(LIAR, ("sha256:" + "0" * 64,) * 3)
        for _ in range(times):  # the seed may point this peer at the liar again
            await download._fetch_relayed(request, relay, _Arrival(download, "seed", "seed-1"))
        await network.settled()  # the report, sent in the background
        network.origin_copiers.shutdown()
        return download, scheduler, fetcher

    return asyncio.run(scenario())


def test_a_corrupt_peer_a_seed_pointed_at_is_reported_by_its_url(tmp_path: Path) -> None:
    download, scheduler, fetcher = _relay_corrupt(tmp_path, liar_is_a_parent=False, times=2)
    assert fetcher.asked == [(LIAR, 0, 3), (SEED, 0, 3)] * 2  # each time the whole run again, from the seed
    assert download.task.bitmap.done == 3
    reports = [body for path, body in scheduler.calls if path == "bad-parent"]  # once, however often it lies
    assert reports == [{"host_id": "child-1", "parent_url": LIAR, "reason": "piece 0 does not match its digest"}]
    metrics = download.network.metrics
    assert metrics.bad_parents._value.get() == 1 and metrics.piece_failures._value.get() == 2


def test_a_corrupt_peer_that_is_also_a_parent_is_dropped_and_reported_by_id(tmp_path: Path) -> None:
    download, scheduler, _ = _relay_corrupt(tmp_path, liar_is_a_parent=True)
    assert "liar-1" not in download.parents and "liar-1" in download.dropped
    reports = [body for path, body in scheduler.calls if path == "bad-parent"]
    assert [report.get("parent_id") for report in reports] == ["liar-1"]
