"""A lying member: a host with a valid seed certificate that accepts triggers, reports the
digests of bytes of its own making, reports done and serves those bytes.

Its pieces match the digests it reported, so only the whole-blob check at each peer can
catch it. What it may cost: a client response cut short (containerd retries). The retry
gets the right bytes, the liar is counted and excluded, and a peer that comes later never
hears of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web

from damselfly.lib.tls import ClusterTLS, issue, request_identity, role_hostname
from damselfly.core.pieces import piece_digest, piece_span
from damselfly.core.wire import (COUNT_HEADER, DoneReport, HostAnnounce, PieceNews, PieceReport, SeedTrigger, TaskRegister,
                            piece_trailer)
from testkit.cluster import SchedulerProcess, start_peer
from testkit.tls import ca_dir
from testkit.wait import free_port, wait_until

MiB = 1024 * 1024
LIAR = "liar-seed"


@dataclass
class LyingSeedFake:
    """Speaks the scheduler API as a seed and the piece API as a parent, over mutual TLS with
    its own certificate; every blob it is asked for is bytes of its own making."""

    tls: ClusterTLS
    scheduler_url: str
    port: int = field(default_factory=free_port)
    triggers: list[str] = field(default_factory=list)  # digests it was asked to fetch
    served: list[str] = field(default_factory=list)  # the member each piece request came from
    _blobs: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # digest: (its bytes, piece length)

    @property
    def upload_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "LyingSeedFake":
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(ready),), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the fake did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/api/v1/seed/{digest}", self._trigger)
        app.router.add_get("/pieces/{digest}/{index}", self._piece)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.tls.server_context()).start()
        self._session = aiohttp.ClientSession()
        self._scheduler_tls = {"ssl": self.tls.client_context("scheduler"),
                               "server_hostname": role_hostname("scheduler")}
        keepalive = asyncio.create_task(self._announce_forever())
        ready.set()
        await self._stop.wait()
        keepalive.cancel()
        await self._session.close()
        await runner.cleanup()

    async def _call(self, path: str, body: dict) -> None:
        async with self._session.post(f"{self.scheduler_url}{path}", json=body, **self._scheduler_tls) as response:
            assert response.status < 300, await response.text()

    async def _announce_forever(self) -> None:
        while True:
            await self._call("/api/v1/hosts", HostAnnounce(LIAR, self.upload_url, seed=True).to_json())
            await asyncio.sleep(2)

    async def _trigger(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        trigger = SeedTrigger.from_json(await request.json())
        self.triggers.append(digest)
        lie = hashlib.shake_256(digest.encode()).digest(trigger.length)
        self._blobs[digest] = (lie, trigger.piece_length)
        count = -(-trigger.length // trigger.piece_length)
        task = f"/api/v1/tasks/{digest}"
        await self._call(f"{task}/register", TaskRegister(LIAR, trigger.length, trigger.piece_length,
                                                          seeding=True).to_json())
        spans = [piece_span(i, trigger.length, trigger.piece_length) for i in range(count)]
        await self._call(f"{task}/pieces", PieceReport(LIAR, tuple(
            PieceNews(i, piece_digest(lie[start:start + size])) for i, (start, size) in enumerate(spans)),
            from_origin=True).to_json())
        await self._call(f"{task}/done", DoneReport(LIAR, success=True).to_json())
        return web.json_response({"accepted": digest}, status=202)

    async def _piece(self, request: web.Request) -> web.Response:
        identity = request_identity(request)
        self.served.append(identity.name if identity else "?")
        lie, piece_length = self._blobs[request.match_info["digest"]]
        first = int(request.match_info["index"])
        last = min(first + int(request.query.get("count", "1")), -(-len(lie) // piece_length)) - 1
        pieces = [lie[s:s + n] for s, n in (piece_span(i, len(lie), piece_length) for i in range(first, last + 1))]
        return web.Response(body=b"".join(p + piece_trailer(piece_digest(p)) for p in pieces),
                            headers={COUNT_HEADER: str(len(pieces))})


@pytest.fixture
def nodes():
    started: list = []
    yield started.append
    for process in reversed(started):
        process.stop()


def _get(node, ns: str, name: str, digest: str) -> tuple[int | None, bytes | None, str | None]:
    """(status, body, error): a response cut short is an error, as containerd sees it."""
    try:
        response = httpx.get(f"{node.url}/v2/{name}/blobs/{digest}", params={"ns": ns}, timeout=90)
        return response.status_code, response.content, None
    except httpx.HTTPError as exc:
        return None, None, f"{exc.__class__.__name__}: {exc}"


def test_a_member_that_lies_costs_at_most_one_response_cut_short(tmp_path: Path, registry, registry_client, nodes):
    data = os.urandom(6 * MiB)
    name = "liars/layer"
    digest = registry_client.push_blob(name, data)
    scheduler = SchedulerProcess(tmp_path / "sch", tls=True).start()
    nodes(scheduler)
    issue(ca_dir(), LIAR, "seed", tmp_path / "liar-tls", ips=("127.0.0.1",))
    liar = LyingSeedFake(ClusterTLS.load(tmp_path / "liar-tls"), scheduler.url).start()
    nodes(liar)
    log = scheduler.workdir / f"scheduler-{scheduler.port}.log"
    wait_until(lambda: f"host {LIAR} joined" in log.read_text(), 20, "the liar to join")
    mapping = ["--registry", f"{registry.host}={registry.url}"]
    peers = [start_peer(tmp_path / f"peer{i}/data", [scheduler.url], mapping) for i in range(3)]
    for peer in peers:
        nodes(peer)

    # The liar is the only seed: both peers take its pieces, which match its digests.
    with ThreadPoolExecutor(2) as pool:
        first = list(pool.map(lambda peer: _get(peer, registry.host, name, digest), peers[:2]))
    assert liar.triggers == [digest] and len(liar.served) > 0, "the liar was asked and served"
    for status, body, error in first:
        assert error is not None or (status == 200 and body == data), "never a whole response of wrong bytes"
    assert any(error is not None for _, _, error in first), "a client response was cut short"
    failures = sum(peer.metric("damselfly_p2p_blob_digest_failures_total") for peer in peers[:2])
    assert failures == sum(error is not None for _, _, error in first)
    assert not any((peer.data_dir / "blobs/sha256" / digest[7:9] / digest[7:]).exists() for peer in peers[:2]), \
        "nothing of the lie kept"

    nodes(start_peer(tmp_path / "seed/data", [scheduler.url], mapping, seed=True))  # an honest seed joins
    served_before = len(liar.served)
    for peer in peers[:2]:  # containerd's retry
        assert _get(peer, registry.host, name, digest) == (200, data, None)
    assert peers[2:] and _get(peers[2], registry.host, name, digest) == (200, data, None)  # a newcomer
    assert peers[2].metric("damselfly_p2p_blob_digest_failures_total") == 0
    assert len(liar.served) == served_before and liar.triggers == [digest], "the liar is out of the task"
    wait_until(lambda: scheduler.metric("damselfly_scheduler_digest_mismatches_total") == failures, 10,
               "the scheduler to count the mismatches")
    started = time.monotonic()
    assert _get(peers[0], registry.host, name, digest)[1] == data and time.monotonic() - started < 5  # now cached
