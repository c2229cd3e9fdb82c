"""The blob store across restarts and crashes, and its quota while clients read."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from tests.support.fakes import GatedRegistryFake
from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.wait import free_port, wait_until

MiB = 1024 * 1024


def fetch(node, ns: str, name: str, digest: str) -> bytes:
    response = httpx.get(f"{node.url}/v2/{name}/blobs/{digest}", params={"ns": ns}, timeout=60)
    assert response.status_code == 200, response.text[:200]
    return response.content


def test_restart_serves_the_populated_store_without_going_upstream(tmp_path, damselfly, registry, registry_client):
    blobs = {registry_client.push_blob("restart/blob", data): data for data in (os.urandom(s) for s in (1, 5 * MiB, 9 * MiB))}
    data_dir = tmp_path / "store"
    first = damselfly(data_dir=data_dir)
    for digest, data in blobs.items():
        assert fetch(first, registry.host, "restart/blob", digest) == data
    first.stop()

    second = damselfly(data_dir=data_dir)
    assert second.metric("damselfly_store_blobs") == 3
    for digest, data in blobs.items():
        assert fetch(second, registry.host, "restart/blob", digest) == data
        head = httpx.head(f"{second.url}/v2/restart/blob/blobs/{digest}", params={"ns": registry.host}, timeout=10)
        assert int(head.headers["Content-Length"]) == len(data)
        assert len(registry.blob_gets(digest)) == 1
    assert second.metric("damselfly_cache_misses_total") == 0


def test_damaged_entries_are_dropped_at_start(tmp_path, damselfly, registry, registry_client):
    data = [os.urandom(2 * MiB), os.urandom(3 * MiB)]
    digests = [registry_client.push_blob("damaged/blob", d) for d in data]
    data_dir = tmp_path / "store"
    node = damselfly(data_dir=data_dir)
    for digest in digests:
        fetch(node, registry.host, "damaged/blob", digest)
    node.stop()
    truncated, unexplained = (data_dir / "blobs/sha256" / d[7:9] / d[7:] for d in digests)
    with open(truncated, "r+b") as f:
        f.truncate(1000)
    (unexplained.parent / (unexplained.name + ".json")).unlink()

    node = damselfly(data_dir=data_dir)
    assert node.metric("damselfly_store_blobs") == 0
    assert "dropping unreadable cache entry" in node.log()
    for digest, expected in zip(digests, data, strict=True):
        assert fetch(node, registry.host, "damaged/blob", digest) == expected
        assert len(registry.blob_gets(digest)) == 2


def test_a_crash_mid_download_leaves_nothing_served_as_complete(tmp_path, damselfly):
    data = os.urandom(20 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fake = GatedRegistryFake(data, gate_at=10 * MiB).start()
    data_dir = tmp_path / "store"
    try:
        node = damselfly("--registry", f"gated.test=http://{fake.host}", data_dir=data_dir)
        with httpx.stream("GET", f"{node.url}/v2/crash/blob/blobs/{digest}", params={"ns": "gated.test"},
                          timeout=30) as response:
            next(response.iter_bytes())
            assert any((data_dir / "incoming").iterdir())
            os.kill(node.process.pid, signal.SIGKILL)
            node.process.wait(10)
        fake.gate.set()
        restarted = damselfly("--registry", f"gated.test=http://{fake.host}", data_dir=data_dir)
        assert not any((data_dir / "incoming").iterdir())
        assert restarted.metric("damselfly_store_blobs") == 0
        assert fetch(restarted, "gated.test", "crash/blob", digest) == data
        assert fake.blob_gets == 2
    finally:
        fake.stop()


def test_eviction_under_a_small_quota_never_cuts_a_reader(tmp_path, damselfly, registry, registry_client):
    """Quota 80 MiB, watermarks 90% / 50%, blobs of 32 MiB each."""
    blobs = [os.urandom(32 * MiB) for _ in range(4)]
    digests = [registry_client.push_blob("evict/blob", b) for b in blobs]
    node = damselfly("--cache-quota", "80MiB", "--cache-high-watermark", "0.9", "--cache-low-watermark", "0.5")
    url = f"{node.url}/v2/evict/blob/blobs/"
    paths = [node.data_dir / "blobs/sha256" / d[7:9] / d[7:] for d in digests]

    assert fetch(node, registry.host, "evict/blob", digests[0]) == blobs[0]
    with httpx.stream("GET", url + digests[0], params={"ns": registry.host}, timeout=60) as slow_reader:
        chunks = slow_reader.iter_bytes()
        received = [next(chunks)]
        # While the reader holds blob 0, two more blobs push the store over its quota.
        assert fetch(node, registry.host, "evict/blob", digests[1]) == blobs[1]
        assert fetch(node, registry.host, "evict/blob", digests[2]) == blobs[2]
        assert paths[0].exists(), "a blob being read must not be evicted"
        assert not paths[1].exists(), "the idle least recently used blob goes first"
        assert node.metric("damselfly_store_evictions_total") == 1
        received.extend(chunks)
    assert b"".join(received) == blobs[0]

    # Once the reader is gone, blob 0 is the oldest idle entry and goes on the next pressure.
    wait_until(lambda: node.metric("damselfly_proxy_active_streams") == 0, 20, "the reader to be released")
    assert fetch(node, registry.host, "evict/blob", digests[3]) == blobs[3]
    assert not paths[0].exists()
    assert paths[3].exists()
    assert node.metric("damselfly_store_used_bytes") <= 80 * MiB
    assert fetch(node, registry.host, "evict/blob", digests[0]) == blobs[0]
    assert len(registry.blob_gets(digests[0])) == 2


@dataclass
class HugeBlobRegistryFake:
    """Claims every blob is 1 TiB long, then sends a few bytes and hangs up."""

    port: int = field(default_factory=free_port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "HugeBlobRegistryFake":
        class Handler(QuietRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(2**40))
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                self.do_HEAD()
                with contextlib.suppress(OSError):  # the mirror hangs up first, as it should
                    self.wfile.write(b"\0" * 65536)

        self._server = ThreadedHTTPServer(Handler, self.port)
        return self

    def stop(self) -> None:
        self._server.stop()


def test_a_blob_claimed_larger_than_the_cache_is_refused_and_evicts_nothing(damselfly, registry, registry_client):
    data = os.urandom(4 * MiB)
    digest = registry_client.push_blob("huge/kept", data)
    fake = HugeBlobRegistryFake().start()
    try:
        node = damselfly("--cache-quota", "64MiB", "--registry", f"huge.test=http://{fake.host}")
        assert fetch(node, registry.host, "huge/kept", digest) == data
        kept = node.data_dir / "blobs/sha256" / digest[7:9] / digest[7:]

        huge = "sha256:" + "f" * 64
        for method in ("GET", "HEAD"):
            response = httpx.request(method, f"{node.url}/v2/huge/blob/blobs/{huge}", params={"ns": "huge.test"},
                                     timeout=30)
            if method == "GET":
                assert response.status_code == 507
                message = response.json()["errors"][0]["message"]
                assert "larger than this cache keeps" in message and "\n" not in message
            else:  # a HEAD of a blob not stored is the registry's answer, passed through
                assert response.status_code == 200 and response.headers["Content-Length"] == str(2**40)
        assert kept.exists() and node.metric("damselfly_store_blobs") == 1
        assert node.metric("damselfly_store_evictions_total") == 0
        assert node.metric("damselfly_store_used_bytes") == len(data)
        assert not any((node.data_dir / "incoming").iterdir())
        assert fetch(node, registry.host, "huge/kept", digest) == data
        assert len(registry.blob_gets(digest)) == 1, "the kept blob was served from the cache"
    finally:
        fake.stop()


@dataclass
class ClaimingRegistryFake:
    """Claims every blob is ``claimed`` bytes long, sends ``sent`` of them, then holds the
    connection until ``hang_up`` is set and closes it: a source that lies about a length."""

    claimed: int
    sent: int
    hang_up: threading.Event = field(default_factory=threading.Event)
    port: int = field(default_factory=free_port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ClaimingRegistryFake":
        fake = self

        class Handler(QuietRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(fake.claimed))
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                self.do_HEAD()
                with contextlib.suppress(OSError):
                    self.wfile.write(b"\0" * fake.sent)
                    self.wfile.flush()
                fake.hang_up.wait(60)

        self._server = ThreadedHTTPServer(Handler, self.port)
        return self

    def stop(self) -> None:
        self.hang_up.set()
        self._server.stop()


def test_a_claimed_length_that_never_arrives_evicts_nothing(damselfly, registry, registry_client):
    """Quota 40 MiB (high watermark 36): four 4 MiB blobs cached, then a source claims 30 MiB
    and sends one byte. Before, the claim alone evicted the whole cache."""
    blobs = [os.urandom(4 * MiB) for _ in range(4)]
    digests = [registry_client.push_blob("claim/kept", b) for b in blobs]
    fake = ClaimingRegistryFake(claimed=30 * MiB, sent=1).start()
    try:
        node = damselfly("--cache-quota", "40MiB", "--registry", f"claiming.test=http://{fake.host}")
        for digest, data in zip(digests, blobs, strict=True):
            assert fetch(node, registry.host, "claim/kept", digest) == data
        wait_until(lambda: node.metric("damselfly_store_blobs") == 4, 20, "the blobs to be stored")

        claimed = "sha256:" + "c" * 64
        with ThreadPoolExecutor(1) as pool:
            reader = pool.submit(httpx.get, f"{node.url}/v2/claim/lie/blobs/{claimed}",
                                 params={"ns": "claiming.test"}, timeout=60)
            # The download is under way once its claimed length is weighed (held, not evicted for).
            wait_until(lambda: node.metric("damselfly_store_used_bytes") == 16 * MiB + 30 * MiB, 20,
                       "the claimed length to be reserved")
            assert node.metric("damselfly_store_blobs") == 4
            assert node.metric("damselfly_store_evictions_total") == 0
            fake.hang_up.set()  # the source fails after its one byte
            with contextlib.suppress(httpx.HTTPError):
                answer = reader.result()
                assert answer.status_code != 200 or len(answer.content) < 30 * MiB
        wait_until(lambda: node.metric("damselfly_store_used_bytes") == 16 * MiB, 20, "the claim to be dropped")
        assert node.metric("damselfly_store_evictions_total") == 0
        for digest, data in zip(digests, blobs, strict=True):
            assert fetch(node, registry.host, "claim/kept", digest) == data
            assert len(registry.blob_gets(digest)) == 1, "the kept blob was served from the cache"
    finally:
        fake.stop()
