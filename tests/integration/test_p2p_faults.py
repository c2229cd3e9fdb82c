"""Faults that must not lose a download or serve a wrong byte, each on real processes."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from damselfly.lib.tls import ClusterTLS
from damselfly.core.pieces import piece_count, piece_length_for
from testkit.cluster import SchedulerProcess, start_peer
from testkit.daemon import Damselfly
from tests.support.fakes import GatedRegistryFake, SilentServerFake
from testkit.tls import tls_dir
from testkit.wait import free_port, wait_until

MiB = 1024 * 1024


@pytest.fixture
def nodes(tmp_path: Path):
    started: list = []

    def add(process):
        started.append(process)
        return process

    yield add
    for process in reversed(started):
        process.stop()


def seeded(tmp_path: Path, nodes, registry, seed_extra: list[str] | None = None):
    """A scheduler and a seed peer; returns the scheduler and a function that adds peers."""
    mapping = ["--registry", f"{registry.host}={registry.url}"]
    scheduler = nodes(SchedulerProcess(tmp_path / "sch", tls=True).start())
    nodes(start_peer(tmp_path / "seed/data", [scheduler.url], mapping, seed=True, extra=seed_extra))

    def peer(name: str, extra: list[str] | None = None, keep: bool = True):
        node = start_peer(tmp_path / f"{name}/data", [scheduler.url], mapping, extra=extra)
        return nodes(node) if keep else node

    return scheduler, peer


def fetch(node, ns: str, name: str, digest: str, timeout: float = 120) -> bytes:
    response = httpx.get(f"{node.url}/v2/{name}/blobs/{digest}", params={"ns": ns}, timeout=timeout)
    assert response.status_code == 200, response.text[:300]
    return response.content


def in_background(fn) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_parent_killed_mid_transfer(tmp_path, registry, registry_client, nodes):
    data = os.urandom(32 * MiB)
    digest = registry_client.push_blob("faults/parent", data)
    _, peer = seeded(tmp_path, nodes, registry)
    parent = peer("parent", ["--upload-rate", "4MB"])
    child = peer("child")
    assert fetch(parent, registry.host, "faults/parent", digest) == data

    thread, result = in_background(lambda: fetch(child, registry.host, "faults/parent", digest))
    wait_until(lambda: child.metric("damselfly_p2p_bytes_total", 'source="peer"') > 0, 30, "a piece from the parent")
    os.kill(parent.process.pid, signal.SIGKILL)
    thread.join(90)
    assert result.get("value") == data, result.get("error")
    assert child.metric("damselfly_p2p_bad_parents_total") >= 1
    assert child.metric("damselfly_p2p_bytes_total", 'source="seed"') > 0
    assert len(registry.blob_gets(digest)) == 1


def test_a_parent_sending_corrupt_pieces_is_dropped_and_reported(tmp_path, registry, registry_client, nodes):
    data = os.urandom(20 * MiB)
    digest = registry_client.push_blob("faults/corrupt", data)
    scheduler, peer = seeded(tmp_path, nodes, registry, ["--upload-rate", "20MB"])
    liar, child = peer("liar"), peer("child")
    assert fetch(liar, registry.host, "faults/corrupt", digest) == data
    stored = liar.data_dir / "blobs/sha256" / digest[7:9] / digest[7:]
    wait_until(stored.exists, 20, "the liar to store the blob")
    with open(stored, "r+b") as f:  # rot every piece on the liar's disk
        for offset in range(0, len(data), piece_length_for(len(data))):
            f.seek(offset + 100)
            f.write(b"\x00" * 16)

    assert fetch(child, registry.host, "faults/corrupt", digest) == data
    assert child.metric("damselfly_p2p_piece_digest_failures_total") >= 1
    assert child.metric("damselfly_p2p_bad_parents_total") >= 1
    assert scheduler.metric("damselfly_scheduler_bad_parent_reports_total") >= 1
    assert "does not match its digest" in child.log()
    assert len(registry.blob_gets(digest)) == 1


def test_the_scheduler_killed_mid_download(tmp_path, registry, registry_client, nodes):
    data = os.urandom(24 * MiB)
    digest = registry_client.push_blob("faults/scheduler", data)
    later = os.urandom(3 * MiB)
    later_digest = registry_client.push_blob("faults/scheduler", later)
    scheduler, peer = seeded(tmp_path, nodes, registry, ["--upload-rate", "6MB"])
    child = peer("child")

    thread, result = in_background(lambda: fetch(child, registry.host, "faults/scheduler", digest))
    wait_until(lambda: child.metric("damselfly_p2p_bytes_total") > 0, 30, "the download to start")
    scheduler.stop(kill=True)
    started = time.monotonic()
    thread.join(90)
    assert result.get("value") == data, result.get("error")
    assert time.monotonic() - started < 60
    assert len(registry.blob_gets(digest)) == 1  # it kept its parent, the seed

    # A new task with every scheduler down: straight to the origin, with the reason counted.
    assert fetch(child, registry.host, "faults/scheduler", later_digest, timeout=30) == later
    assert child.metric("damselfly_p2p_back_to_source_total", 'reason="scheduler unreachable"') == 1


@pytest.mark.parametrize("restarted", [False, True], ids=["stays-down", "restarted"])
def test_the_seed_killed_before_it_finishes(tmp_path, nodes, restarted):
    """Restarted within the host expiry, the seed keeps its place in the scheduler's view of
    the task but has nothing: the peer must not wait on it for ever either."""
    data = os.urandom(24 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    origin = GatedRegistryFake(data, gate_at=10 * MiB).start()
    try:
        mapping = ["--registry", f"gated.test=http://{origin.host}"]
        scheduler = nodes(SchedulerProcess(tmp_path / "sch", tls=True).start())
        seed = nodes(start_peer(tmp_path / "seed/data", [scheduler.url], mapping, seed=True))
        child = nodes(start_peer(tmp_path / "child/data", [scheduler.url], mapping))
        thread, result = in_background(lambda: fetch(child, "gated.test", "faults/seed", digest))
        wait_until(lambda: child.metric("damselfly_p2p_bytes_total", 'source="seed"') >= 8 * MiB, 30,
                   "the first pieces from the seed")
        os.kill(seed.process.pid, signal.SIGKILL)
        if restarted:
            seed.process.wait(10)
            nodes(Damselfly(seed.data_dir, seed.args, command="daemon", port=seed.port,
                            upload_port=seed.upload_port, tls_name=seed.tls_name).start())
        origin.gate.set()
        started = time.monotonic()
        thread.join(90)
        assert result.get("value") == data, result.get("error")
        assert time.monotonic() - started < 45
        assert child.metric("damselfly_p2p_back_to_source_total") == 1
        assert child.metric("damselfly_p2p_bytes_total", 'source="origin"') < len(data)  # only the missing pieces
    finally:
        origin.stop()


def test_a_seed_that_cannot_reach_the_origin_sends_its_peers_there(tmp_path, registry, registry_client, nodes):
    """The seed accepts the task, then cannot start it (here its proxy is down; on Docker
    Hub it could be a 429): the scheduler must stop offering it, and the peer must get the
    blob from the origin itself, soon, with the reason counted."""
    data = os.urandom(6 * MiB)
    digest = registry_client.push_blob("faults/seedless", data)
    mapping = ["--registry", f"{registry.host}={registry.url}"]
    scheduler = nodes(SchedulerProcess(tmp_path / "sch").start())
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    seed = nodes(start_peer(tmp_path / "seed/data", [scheduler.url], mapping, seed=True,
                            env={"http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "no_proxy": "", "NO_PROXY": ""}))
    child = nodes(start_peer(tmp_path / "child/data", [scheduler.url], mapping))
    started = time.monotonic()
    assert fetch(child, registry.host, "faults/seedless", digest, timeout=90) == data
    assert time.monotonic() - started < 20
    assert child.metric("damselfly_p2p_back_to_source_total", 'reason="scheduler"') == 1
    assert "goes back to the origin" in child.log() and "no seed peer" in child.log()
    assert "could not start" in seed.log()


def test_a_seed_that_never_answers_does_not_stall_its_peers(tmp_path, registry, registry_client, nodes):
    """A seed that still keeps its host alive but whose upload port swallows every request
    (a firewall that drops, a wrong advertised address) sorts first. The scheduler must move
    on to the next seed within the peer's wait, or the peer takes its scheduler for dead
    and goes to the registry; and it must ask the silent seed last from then on."""
    silent = SilentServerFake()
    try:
        scheduler, peer = seeded(tmp_path, nodes, registry)
        member = ClusterTLS.load(tls_dir("a-silent-seed", "seed")).client_context()  # only a seed may say it is one
        announced = httpx.post(f"{scheduler.url}/api/v1/hosts", timeout=10, verify=member,
                               json={"id": "a-silent-seed", "upload_url": f"https://{silent.host}", "seed": True})
        assert announced.status_code == 200
        child = peer("child")
        for name in ("faults/silent-1", "faults/silent-2"):
            data = os.urandom(3 * MiB)
            assert fetch(child, registry.host, name, registry_client.push_blob(name, data), timeout=60) == data
        assert child.metric("damselfly_p2p_back_to_source_total") == 0
        assert child.metric("damselfly_p2p_bytes_total", 'source="seed"') == 6 * MiB
        assert scheduler.metric("damselfly_scheduler_seed_triggers_total", 'result="failed"') == 1
        assert scheduler.metric("damselfly_scheduler_seed_triggers_total", 'result="accepted"') == 2
    finally:
        silent.close()


def test_a_task_moves_to_the_next_scheduler_on_the_ring(tmp_path, registry, registry_client, nodes):
    from damselfly.lib.hashring import HashRing

    first = nodes(SchedulerProcess(tmp_path / "sch1", tls=True).start())
    second = nodes(SchedulerProcess(tmp_path / "sch2", tls=True).start())
    urls = [first.url, second.url]
    mapping = ["--registry", f"{registry.host}={registry.url}"]
    nodes(start_peer(tmp_path / "seed/data", urls, mapping, seed=True))
    peers = [nodes(start_peer(tmp_path / f"peer{i}/data", urls, mapping)) for i in range(2)]
    while True:  # a blob whose task the first scheduler owns
        data = os.urandom(6 * MiB)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if HashRing(urls).owners(digest)[0] == first.url:
            break
    registry_client.push_blob("faults/ring", data)
    first.stop(kill=True)

    for peer in peers:
        assert fetch(peer, registry.host, "faults/ring", digest, timeout=60) == data
        assert peer.metric("damselfly_p2p_back_to_source_total") == 0
    assert len(registry.blob_gets(digest)) == 1
    assert second.metric("damselfly_scheduler_seed_triggers_total", 'result="accepted"') == 1


@pytest.mark.parametrize("stop", ["graceful", "crash"])
def test_a_peer_restarted_mid_download_resumes_its_pieces(tmp_path, registry, registry_client, nodes, stop):
    data = os.urandom(40 * MiB)
    digest = registry_client.push_blob("faults/resume", data)
    _, add_peer = seeded(tmp_path, nodes, registry, ["--upload-rate", "8MB"])
    peer = add_peer("peer", ["--host-id", "resuming-peer"], keep=False)
    thread, _ = in_background(lambda: httpx.get(f"{peer.url}/v2/faults/resume/blobs/{digest}",
                                                params={"ns": registry.host}, timeout=60))
    wait_until(lambda: peer.metric("damselfly_p2p_pieces_total") >= 3, 30, "three pieces at the peer")
    wait_until(lambda: any(p.suffix == ".partial" for p in (peer.data_dir / "incoming").iterdir()), 10,
               "a checkpoint")
    peer.stop() if stop == "graceful" else os.kill(peer.process.pid, signal.SIGKILL)
    peer.process.wait(20)
    thread.join(30)

    restarted = add_peer("peer", ["--host-id", "resuming-peer"])
    assert fetch(restarted, registry.host, "faults/resume", digest) == data
    piece, pieces = piece_length_for(len(data)), piece_count(len(data), piece_length_for(len(data)))
    kept = int(re.search(rf"resuming {digest}: (\d+) of {pieces} pieces kept", restarted.log()).group(1))
    assert kept >= 1 if stop == "crash" else kept >= 3  # a crash may lose the last half second of checkpoints
    assert restarted.metric("damselfly_p2p_bytes_total") == (pieces - kept) * piece  # only the missing pieces
    assert len(registry.blob_gets(digest)) == 1


def test_a_parent_with_every_upload_slot_taken_is_waited_for_not_abandoned(tmp_path, registry, registry_client, nodes):
    """The seed's only upload slot is busy for > 15 s with another task's pieces, so the
    waiting peer's first ask is answered 503: it must ask again rather than drop its only
    parent and go to the registry 15 s later (as all four peers of a layer did in the harness)."""
    small, large = os.urandom(1 * MiB), os.urandom(16 * MiB)
    small_digest = registry_client.push_blob("faults/busy", small)
    large_digest = registry_client.push_blob("faults/busy", large)
    mapping = ["--registry", f"{registry.host}={registry.url}"]
    scheduler = nodes(SchedulerProcess(tmp_path / "sch", tls=True).start())
    seed = nodes(start_peer(tmp_path / "seed/data", [scheduler.url], mapping, seed=True,
                            extra=["--upload-slots", "1", "--upload-rate", "500KB"]))  # busy for > 15 s
    for digest in (small_digest, large_digest):
        fetch(seed, registry.host, "faults/busy", digest)
    busy_peer, waiting_peer = (nodes(start_peer(tmp_path / f"{name}/data", [scheduler.url], mapping))
                               for name in ("busy", "waiting"))
    thread, result = in_background(lambda: fetch(busy_peer, registry.host, "faults/busy", large_digest))
    wait_until(lambda: seed.metric("damselfly_upload_active") >= 1, 10, "the upload slot taken")
    refused_before = seed.metric("damselfly_upload_refused_total", 'reason="no_slot"')

    assert fetch(waiting_peer, registry.host, "faults/busy", small_digest, timeout=60) == small
    thread.join(60)
    assert result.get("value") == large
    assert seed.metric("damselfly_upload_refused_total", 'reason="no_slot"') > refused_before
    assert waiting_peer.metric("damselfly_p2p_back_to_source_total") == 0
    assert len(registry.blob_gets(small_digest)) == 1, "only the seed read the registry"
