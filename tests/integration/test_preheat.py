"""Preheat jobs through a real cluster: a manager and a scheduler sharing a real redis-server,
a seed peer and peers, all over mutual TLS, and real docker-registries (one open, one behind
htpasswd). Each Dragonfly complaint the issue names is a test here: SUCCESS means a node
pulls and runs the image with the registry stopped; a private image's credentials never
show in the API, the logs or Redis; a preheat too large, a registry that dies midway, a
cancel and a Redis outage each end the way they should.

The manager tells members to keep alive every 0.2 s (default 5 s), so that joins show fast.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.cluster import SchedulerProcess, start_peer
from testkit.containerd import write_hosts
from testkit.daemon import Damselfly
from testkit.images import (OCI_MANIFEST, build_image, busybox_layer, image_from_layers, push_image, push_index,
                            random_layer)
from testkit.manager import ROOT_PASSWORD, Manager
from testkit.nydus import cli as nydus_cli
from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.redis import RedisServer
from testkit.registry import Registry, RegistryClient, htpasswd_auth
from testkit.tls import tls_dir
from testkit.wait import free_port, wait_until

MiB = 1024 * 1024
FAST = ["--keepalive-interval", "0.2", "--inactive-after", "2"]
FINAL = ("SUCCESS", "FAILURE", "CANCELLED")
USER, PASSWORD = "alice", "preheat-secret-password"
SEED_QUOTA = 48 * MiB
TRICKLE = 128 * 1024
PEERS = 4  # the load test: a 4-peer cluster
WAIT = 60


class SlowRegistry:
    """A registry that serves manifests and small blobs, and sends each large blob's first
    half, then nothing: a registry that dies in the middle of a preheat. Blobs added with
    ``trickle`` come whole, slowly (TRICKLE bytes a tenth of a second)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.blobs: dict[str, bytes] = {}
        self.trickled: set[str] = set()
        self.manifests: dict[str, tuple[bytes, str]] = {}
        self.stalled = threading.Event()
        self.release = threading.Event()
        fake = self

        class Handler(QuietRequestHandler):
            def _answer(self, with_body: bool) -> None:
                path = self.path.split("?")[0]
                name = path.rsplit("/", 1)[-1]
                if "/manifests/" in path and name in fake.manifests:
                    body, media_type = fake.manifests[name]
                    self.send_response(200)
                    self.send_header("Content-Type", media_type)
                    self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(body).hexdigest())
                elif "/blobs/" in path and name in fake.blobs:
                    body = fake.blobs[name]
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not with_body:
                    return
                if len(body) < MiB:
                    self.wfile.write(body)
                    return
                if name in fake.trickled:
                    fake.stalled.set()
                    for start in range(0, len(body), TRICKLE):
                        self.wfile.write(body[start:start + TRICKLE])
                        self.wfile.flush()
                        time.sleep(0.1)  # the registry's pace, not a wait on anything
                    return
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                fake.stalled.set()
                fake.release.wait(120)  # the rest never comes (until the test ends)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

        self.server = ThreadedHTTPServer(Handler, self.port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_image(self, name: str, tag: str, layer: bytes, trickle: bool = False) -> str:
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
                            ).encode()
        digest_of = lambda data: "sha256:" + hashlib.sha256(data).hexdigest()  # noqa: E731
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": digest_of(config), "size": len(config)},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                           "digest": digest_of(layer), "size": len(layer)}]}).encode()
        self.blobs[digest_of(config)], self.blobs[digest_of(layer)] = config, layer
        if trickle:
            self.trickled.add(digest_of(layer))
        self.manifests[tag] = self.manifests[digest_of(manifest)] = (manifest, OCI_MANIFEST)
        return f"{self.host}/{name}:{tag}"

    def stop(self) -> None:
        self.release.set()
        self.server.stop()


@dataclass
class Cluster:
    tmp: Path
    redis: RedisServer
    registry: Registry
    private: Registry
    slow: SlowRegistry
    manager: Manager
    scheduler: SchedulerProcess
    seed: Damselfly
    peers: list[Damselfly]

    def root(self) -> httpx.Client:
        return self.manager.root()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("preheat")
    started: list[Any] = []
    try:
        redis = RedisServer().start()
        started.append(redis)
        registry = Registry(tmp / "registry").start()
        private = Registry(tmp / "private", auth=htpasswd_auth(tmp / "private", {USER: PASSWORD})).start()
        slow = SlowRegistry()
        started += [registry, private, slow]
        mapping = [arg for reg in (registry, private, slow) for arg in ("--registry", f"{reg.host}=http://{reg.host}")]
        manager = Manager(tmp / "manager", args=[*FAST, "--redis", redis.url, *mapping],
                          tls_dir=tls_dir("preheat-manager", "manager")).start()
        started.append(manager)
        scheduler = SchedulerProcess(tmp / "scheduler", tls=True,
                                     extra=["--manager", manager.url, "--redis", redis.url]).start()
        started.append(scheduler)
        member = ["--manager", manager.url]
        seed = start_peer(tmp / "seed" / "data", [scheduler.url], mapping, seed=True,
                          extra=[*member, "--cache-quota", str(SEED_QUOTA)])
        started.append(seed)
        peers = [start_peer(tmp / f"peer{i}" / "data", [scheduler.url], mapping, extra=member) for i in range(PEERS)]
        started += peers
        found = Cluster(tmp, redis, registry, private, slow, manager, scheduler, seed, peers)
        with found.root() as root:
            wait_until(lambda: len(root.get("/seed-peers", params={"state": "active"}).json()) == 1
                       and len(root.get("/peers", params={"state": "active"}).json()) == PEERS, WAIT, "the members")
        wait_until(lambda: scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == PEERS + 1, WAIT,
                   "the scheduler knowing the seed and every peer")
        yield found
    finally:
        for thing in reversed(started):
            thing.stop() if not isinstance(thing, RedisServer) else thing.close()


def preheat(root: httpx.Client, **args: Any) -> dict[str, Any]:
    answer = root.post("/jobs", json={"type": "preheat", "args": {"type": "image", **args}})
    assert answer.status_code == 201, answer.text
    assert answer.json()["state"] == "PENDING"
    return answer.json()


def ended(root: httpx.Client, job: dict[str, Any], timeout: float = WAIT) -> dict[str, Any]:
    return wait_until(lambda: (found := root.get(f"/jobs/{job['id']}").json())["state"] in FINAL and found,
                      timeout, f"job {job['id']} to end")


def holders(job: dict[str, Any]) -> dict[str, set[str]]:
    """Each part of a job: the hosts that hold it."""
    return {blob["digest"]: {h["host_id"] for h in blob["hosts"] if h["state"] == "done"} for blob in job["blobs"]}


def blob_gets(registry: Registry, digests: list[str]) -> int:
    return sum(len(registry.blob_gets(digest)) for digest in digests)


def test_an_image_preheated_on_every_peer_pulls_and_runs_on_each_with_the_registry_down(
        cluster: Cluster, containerd) -> None:
    image = build_image("preheat/app", [2 * MiB, 3 * MiB], tag="v1")
    push_image(RegistryClient(cluster.registry.url), image)
    blobs = [layer.digest for layer in image.layers] + ["sha256:" + hashlib.sha256(image.config).hexdigest()]
    everyone = {cluster.seed.tls_name, *(p.tls_name for p in cluster.peers)}
    with cluster.root() as root:
        job = ended(root, preheat(root, url=image.reference(cluster.registry.host), scope="all_peers"))
        assert job["state"] == "SUCCESS", job["error"]
        placed = holders(job)
        assert set(placed) == {image.manifest_digest, *blobs}
        assert all(hosts == everyone for hosts in placed.values()), placed
        assert blob_gets(cluster.registry, blobs) == len(blobs)  # each blob once, by the seed

        again = ended(root, preheat(root, url=image.reference(cluster.registry.host), scope="all_peers"))
        assert again["state"] == "SUCCESS" and blob_gets(cluster.registry, blobs) == len(blobs)

    cluster.registry.stop()
    try:
        for index, peer in enumerate(cluster.peers):
            hosts = write_hosts(cluster.tmp / f"hosts{index}", peer.url, cluster.registry.host, cluster.registry.url)
            fresh = containerd()
            fresh.ctr("images", "pull", "--hosts-dir", str(hosts), image.reference(cluster.registry.host))
            assert fresh.ctr("run", "--rm", image.reference(cluster.registry.host), f"preheat-{index}",
                             "/bin/echo", "ok").stdout.strip() == "ok"
    finally:
        cluster.registry.start()


def test_each_scope_places_where_it_says(cluster: Cluster) -> None:
    image = build_image("preheat/scopes", [MiB], tag="v1")
    push_image(RegistryClient(cluster.registry.url), image)
    reference = image.reference(cluster.registry.host)
    with cluster.root() as root:
        for scope, extra, expected in [
                ("single_seed_peer", {}, {cluster.seed.tls_name}),
                ("all_seed_peers", {}, {cluster.seed.tls_name}),
                ("all_peers", {"count": 1}, {cluster.seed.tls_name, sorted(p.tls_name for p in cluster.peers)[0]})]:
            job = ended(root, preheat(root, url=reference, scope=scope, **extra))
            assert job["state"] == "SUCCESS", job["error"]
            assert all(hosts == expected for hosts in holders(job).values()), (scope, holders(job))


def test_a_private_image_is_preheated_with_credentials_nobody_else_sees(cluster: Cluster) -> None:
    image = build_image("secret/app", [MiB], tag="v1")
    push_image(RegistryClient(cluster.private.url, credentials=(USER, PASSWORD)), image)
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with cluster.root() as root:
        job = preheat(root, url=image.reference(cluster.private.host), scope="all_peers", username=USER,
                      password=PASSWORD)
        assert job["args"]["private"] is True and PASSWORD not in json.dumps(job)
        snapshots = []  # what Redis holds while the job is queued and running

        def redis_holds() -> bool:
            client = cluster.redis.client()
            snapshots.extend(client.get(key) or b"" for key in client.scan_iter("damselfly:jobs:*")
                             if client.type(key) == b"string")
            return any(b'"sealed"' in value for value in snapshots)

        wait_until(redis_holds, WAIT, "the job on the board")
        job = ended(root, job)
        assert job["state"] == "SUCCESS", job["error"]
        assert PASSWORD not in root.get(f"/jobs/{job['id']}").text and PASSWORD not in root.get("/jobs").text
    for value in snapshots:
        assert PASSWORD.encode() not in value and basic.encode() not in value
    for log in [cluster.manager.log(), cluster.seed.log(), *(p.log() for p in cluster.peers),
                (cluster.scheduler.workdir / f"scheduler-{cluster.scheduler.port}.log").read_text()]:
        assert PASSWORD not in log and basic not in log

    # The registry down, a caller with no confirmation gets a clear 503 for the kept manifest, never the image.
    cluster.private.stop()
    try:
        with httpx.Client(timeout=30) as client:
            answer = client.get(f"{cluster.peers[0].url}/v2/secret/app/manifests/v1",
                                params={"ns": cluster.private.host},
                                headers={"Accept": OCI_MANIFEST})
            assert answer.status_code == 503, answer.text
            blob = client.get(f"{cluster.peers[0].url}/v2/secret/app/blobs/{image.layers[1].digest}",
                              params={"ns": cluster.private.host})
            assert blob.status_code >= 400 and image.layers[1].data[:64] not in blob.content
    finally:
        cluster.private.start()


def test_a_preheat_larger_than_the_seeds_cache_fails_with_a_clear_error(cluster: Cluster) -> None:
    image = build_image("preheat/huge", [SEED_QUOTA // 2, SEED_QUOTA // 2 + MiB], tag="v1")
    push_image(RegistryClient(cluster.registry.url), image)
    with cluster.root() as root:
        job = ended(root, preheat(root, url=image.reference(cluster.registry.host)))
    assert job["state"] == "FAILURE" and "cache quota" in job["error"], job["error"]
    assert blob_gets(cluster.registry, [layer.digest for layer in image.layers[1:]]) == 0  # busybox is shared


def test_run_preheats_through_its_own_process_without_redis(tmp_path: Path, cluster: Cluster) -> None:
    image = build_image("preheat/run", [MiB], tag="v1")
    push_image(RegistryClient(cluster.registry.url), image)
    port = free_port()
    node = Damselfly(tmp_path / "data", ["--registry", f"{cluster.registry.host}={cluster.registry.url}"],
                     env={"DAMSELFLY_ROOT_PASSWORD": ROOT_PASSWORD}, manager_listen=f"127.0.0.1:{port}").start()
    try:
        embedded = Manager(tmp_path / "unused", port=port)  # a client of run's manager, not a process
        with embedded.root() as root:
            wait_until(lambda: root.get("/seed-peers", params={"state": "active"}).json(), WAIT, "run's seed peer")
            job = ended(root, preheat(root, url=image.reference(cluster.registry.host)))
            assert job["state"] == "SUCCESS", job["error"]
        gets = blob_gets(cluster.registry, [image.layers[1].digest])
        assert httpx.get(f"{node.url}/v2/{image.name}/blobs/{image.layers[1].digest}",
                         params={"ns": cluster.registry.host}, timeout=WAIT).content == image.layers[1].data
        assert blob_gets(cluster.registry, [image.layers[1].digest]) == gets == 1  # the pull read the preheat
    finally:
        node.stop()


def test_a_preheat_whose_registry_dies_midway_fails_within_its_timeout(cluster: Cluster) -> None:
    reference = cluster.slow.add_image("dies/app", "v1", os.urandom(4 * MiB))
    with cluster.root() as root:
        started = time.monotonic()
        job = ended(root, preheat(root, url=reference, timeout=6), timeout=6 + 45)
    assert job["state"] == "FAILURE" and "timed out" in job["error"] and "not placed" in job["error"], job["error"]
    assert time.monotonic() - started < 6 + 35  # the worker reports at the deadline; the manager reads it at once


def test_cancelling_a_job_stops_it(cluster: Cluster) -> None:
    reference = cluster.slow.add_image("cancel/app", "v1", os.urandom(4 * MiB))
    cluster.slow.stalled.clear()
    with cluster.root() as root:
        job = preheat(root, url=reference, scope="all_peers")
        wait_until(cluster.slow.stalled.is_set, WAIT, "the seed fetching the layer")
        cancelled = root.delete(f"/jobs/{job['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
        assert root.delete(f"/jobs/{job['id']}").status_code == 409
        wait_until(lambda: f"preheat job {job['id']}: CANCELLED" in
                   (cluster.scheduler.workdir / f"scheduler-{cluster.scheduler.port}.log").read_text(),
                   WAIT, "the worker to stop")
        assert root.get(f"/jobs/{job['id']}").json()["state"] == "CANCELLED"
    client = cluster.redis.client()
    assert not [key for key in client.scan_iter(f"damselfly:jobs:*:{job['id']}:job")]


def test_jobs_wait_for_redis_and_go_on_when_it_returns(cluster: Cluster) -> None:
    image = build_image("preheat/redis-down", [MiB], tag="v1")
    push_image(RegistryClient(cluster.registry.url), image)
    cluster.redis.stop()
    try:
        with cluster.root() as root:
            job = preheat(root, url=image.reference(cluster.registry.host))
            wait_until(lambda: "cannot be reached" in cluster.manager.log(), WAIT, "the manager noticing")
            assert root.get(f"/jobs/{job['id']}").json()["state"] == "PENDING"
            assert cluster.manager.process.poll() is None and cluster.scheduler.process.poll() is None
    finally:
        cluster.redis.start()
    with cluster.root() as root:
        assert ended(root, job)["state"] == "SUCCESS"


def test_a_preheat_survives_redis_restarting_empty_midway(cluster: Cluster) -> None:
    reference = cluster.slow.add_image("trickle/app", "v1", os.urandom(3 * MiB), trickle=True)
    cluster.slow.stalled.clear()
    with cluster.root() as root:
        job = preheat(root, url=reference, scope="all_peers")
        wait_until(cluster.slow.stalled.is_set, WAIT, "the seed fetching the layer")
        cluster.redis.restart()  # everything on the board is gone
        done = ended(root, job)
    assert done["state"] == "SUCCESS", done["error"]
    everyone = {cluster.seed.tls_name, *(p.tls_name for p in cluster.peers)}
    assert all(hosts == everyone for hosts in holders(done).values()), holders(done)
    assert cluster.manager.process.poll() is None and cluster.scheduler.process.poll() is None


def test_a_hundred_jobs_and_fifty_pulls_at_once_fetch_each_blob_once(cluster: Cluster) -> None:
    images = [build_image(f"load/app{i}", [256 * 1024], tag="v1") for i in range(4)]
    for image in images:
        push_image(RegistryClient(cluster.registry.url), image)
    digests = list({layer.digest for image in images for layer in image.layers[1:]})
    with cluster.root() as root, ThreadPoolExecutor(16) as pool:
        jobs = [preheat(root, url=images[i % 4].reference(cluster.registry.host), scope="all_peers")
                for i in range(100)]

        def pull(index: int) -> bytes:
            image, node = images[index % 4], cluster.peers[index % PEERS]
            return httpx.get(f"{node.url}/v2/{image.name}/blobs/{image.layers[1].digest}",
                             params={"ns": cluster.registry.host}, timeout=WAIT).content

        pulls = list(pool.map(pull, range(50)))
        assert all(hashlib.sha256(body).hexdigest() == images[i % 4].layers[1].digest.split(":")[1]
                   for i, body in enumerate(pulls))
        states = [ended(root, job, timeout=120)["state"] for job in jobs]
    assert states == ["SUCCESS"] * 100
    assert blob_gets(cluster.registry, digests) == len(digests)  # nothing fetched twice
    client = cluster.redis.client()
    assert not list(client.scan_iter("damselfly:jobs:*:job")), "ended jobs leave the board"
    assert all(client.ttl(key) > 0 for key in client.scan_iter("damselfly:*")), "every key expires"


def test_who_may_preheat_and_what_is_refused_with_a_clear_error(cluster: Cluster) -> None:
    reference = f"{cluster.registry.host}/preheat/app:v1"
    with cluster.root() as root:
        expires = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
        tokens = {scope: root.post("/personal-access-tokens", json={"name": f"preheat-{scope}", "scopes": [scope],
                                                                    "expires_at": expires}).json()["token"]
                  for scope in ("job", "cluster")}
        for args, status, words in [
                ({"type": "image", "url": "not a reference"}, 400, "url"),
                ({"type": "image", "url": reference, "platform": "linux"}, 400, "platform"),
                ({"type": "image", "url": reference, "scope": "everyone"}, 400, "scope"),
                ({"type": "file", "url": f"http://{cluster.registry.host}/v2/a/blobs/sha256:{'0' * 64}"}, 400,
                 "digest"),
                ({"type": "image", "url": reference, "timeout": 0}, 400, "timeout"),
                ({"type": "image", "url": reference, "password": "x", "surprise": 1}, 400, "surprise")]:
            answer = root.post("/jobs", json={"type": "preheat", "args": args})
            assert answer.status_code == status and words in answer.json()["error"], (args, answer.text)
        assert root.post("/jobs", json={"type": "preheat", "cluster_ids": [999], "args": {
            "type": "image", "url": reference}}).status_code == 404
    with cluster.manager.client(tokens["job"]) as client:
        assert client.post("/jobs", json={"type": "preheat", "args": {"type": "image", "url": reference}}
                           ).status_code == 201
    with cluster.manager.client(tokens["cluster"]) as client:
        assert client.post("/jobs", json={"type": "preheat", "args": {"type": "image", "url": reference}}
                           ).status_code == 403
    with cluster.manager.guest("preheat-guest") as guest:
        assert guest.get("/jobs").status_code == 200
        assert guest.post("/jobs", json={"type": "preheat", "args": {"type": "image", "url": reference}}
                          ).status_code == 403
        assert guest.delete(f"/jobs/{guest.get('/jobs').json()[0]['id']}").status_code == 403


def test_a_manager_without_a_job_board_refuses_jobs(tmp_path: Path) -> None:
    manager = Manager(tmp_path / "manager").start()
    try:
        with manager.root() as root:
            answer = root.post("/jobs", json={"type": "preheat", "args": {"type": "image", "url": "example.com/a:b"}})
        assert answer.status_code == 409 and "--redis" in answer.json()["error"]
    finally:
        manager.stop()


def test_a_preheated_nydus_image_mounts_lazily_on_a_peer_with_the_registry_down(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = build_image("preheat/nydus", [MiB], tag="oci")
    push_image(RegistryClient(cluster.registry.url), image)
    target = f"{cluster.registry.host}/preheat/nydus:nydus"
    nydus_cli("nydus", "convert", "--plain-http", image.reference(cluster.registry.host), target)
    with cluster.root() as root:
        job = ended(root, preheat(root, url=target, scope="all_peers"))
    assert job["state"] == "SUCCESS", job["error"]
    assert len(job["blobs"]) >= 3  # the manifest, the config, the data blob and the bootstrap

    monkeypatch.setenv("DAMSELFLY_RUN_DIR", str(tmp_path / "run"))
    point = tmp_path / "mnt"
    point.mkdir()
    cluster.registry.stop()
    try:
        nydus_cli("nydus", "mount", target, str(point), "--mirror", cluster.peers[1].url,
                  "--cache-dir", str(tmp_path / "cache"))
        assert (point / "data" / "blob-0.bin").stat().st_size == MiB
        assert (point / "bin" / "busybox").read_bytes()[:4] == b"\x7fELF"
    finally:
        if os.path.ismount(point):
            nydus_cli("nydus", "umount", str(point), check=False)
        cluster.registry.start()


def test_a_two_platform_index_preheated_pulls_and_runs_on_every_peer_with_the_registry_down(
        cluster: Cluster, containerd) -> None:
    busybox = busybox_layer()
    name = "preheat/multi"
    here = image_from_layers(name, [busybox, random_layer(MiB, 0)], ["/bin/echo", "ok"], path="/bin")
    other_arch = "arm64" if here_arch() == "amd64" else "amd64"
    other = image_from_layers(name, [busybox, random_layer(MiB, 1)], ["/bin/echo", "ok"], path="/bin",
                              arch=other_arch)
    client = RegistryClient(cluster.registry.url)
    for image in (here, other):
        push_image(client, image)
    push_index(client, name, "multi", [(here, {"os": "linux", "architecture": here_arch()}),
                                       (other, {"os": "linux", "architecture": other_arch})])
    reference = f"{cluster.registry.host}/{name}:multi"
    with cluster.root() as root:
        only = ended(root, preheat(root, url=reference, platform=f"linux/{other_arch}"))
        assert only["state"] == "SUCCESS", only["error"]
        assert other.manifest_digest in holders(only) and here.manifest_digest not in holders(only)
        job = ended(root, preheat(root, url=reference, scope="all_peers"))
    assert job["state"] == "SUCCESS", job["error"]
    placed = holders(job)
    assert {here.manifest_digest, other.manifest_digest, here.layers[1].digest, other.layers[1].digest} <= set(placed)
    everyone = {cluster.seed.tls_name, *(p.tls_name for p in cluster.peers)}
    assert all(hosts == everyone for hosts in placed.values()), placed

    cluster.registry.stop()
    try:
        for index, peer in enumerate(cluster.peers):
            hosts = write_hosts(cluster.tmp / f"multi-hosts{index}", peer.url, cluster.registry.host,
                                cluster.registry.url)
            fresh = containerd()
            fresh.ctr("images", "pull", "--hosts-dir", str(hosts), reference)
            assert fresh.ctr("run", "--rm", reference, f"multi-{index}", "/bin/echo", "ok").stdout.strip() == "ok"
    finally:
        cluster.registry.start()


def here_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
