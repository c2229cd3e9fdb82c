"""A cluster of separate processes on loopback: scheduler, seed peer, peers; docker-registry as origin."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from testkit.cluster import SchedulerProcess, start_peer
from testkit.containerd import write_hosts
from testkit.daemon import Damselfly
from testkit.images import build_image, push_image
from testkit.wait import wait_until

MiB = 1024 * 1024


def cluster_of(tmp_path: Path, registry, tls: bool) -> Iterator[Callable[..., Damselfly]]:
    """``cluster.scheduler`` is started; call ``cluster(seed=...)`` to add daemons."""
    started: list = []
    scheduler = SchedulerProcess(tmp_path / "scheduler", tls=tls).start()
    started.append(scheduler)
    mapping = ["--registry", f"{registry.host}={registry.url}"]

    def add(seed: bool = False, schedulers: list[str] | None = None, extra: list[str] | None = None) -> Damselfly:
        node = start_peer(tmp_path / f"node{len(started)}" / "data", schedulers or [scheduler.url], mapping, seed,
                          extra)
        started.append(node)
        return node

    add.scheduler = scheduler  # type: ignore[attr-defined]
    yield add
    for process in reversed(started):
        process.stop()


@pytest.fixture
def cluster(tmp_path: Path, registry) -> Iterator[Callable[..., Damselfly]]:
    """Members over mutual TLS, as a cluster is deployed."""
    yield from cluster_of(tmp_path, registry, tls=True)


def get_blob(node: Damselfly, ns: str, name: str, digest: str, **headers: str) -> bytes:
    response = httpx.get(f"{node.url}/v2/{name}/blobs/{digest}", params={"ns": ns}, headers=headers, timeout=120)
    assert response.status_code in (200, 206), response.text[:300]
    return response.content


def test_cold_image_stampede_loads_the_registry_once(tmp_path, registry, registry_client, cluster, containerd):
    image = build_image("p2p/stampede", [6 * MiB, 17 * MiB, 9 * MiB])
    push_image(registry_client, image)
    seed = cluster(seed=True, extra=["--upload-rate", "10MB"])  # a seed's uplink is the scarce resource
    peers = [cluster() for _ in range(4)]
    wait_until(lambda: cluster.scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == 5, 20, "hosts to join")
    reference = image.reference(registry.host)
    instances = [containerd() for _ in range(2)]

    def containerd_pull(index: int) -> str:
        hosts = write_hosts(tmp_path / f"hosts{index}", peers[index].url, registry.host, registry.url)
        instances[index].ctr("images", "pull", "--hosts-dir", str(hosts), reference)
        return instances[index].ctr("run", "--rm", reference, f"p2p-{index}", "/bin/echo", "ok").stdout.strip()

    def http_pull(index: int) -> list[bytes]:
        return [get_blob(peers[index], registry.host, image.name, layer.digest) for layer in image.layers]

    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(containerd_pull, i) for i in (0, 1)]
        fetched = [pool.submit(http_pull, i) for i in (2, 3)]
        assert [r.result(timeout=300) for r in runs] == ["ok", "ok"]
        for result in fetched:
            assert result.result(timeout=300) == [layer.data for layer in image.layers]

    for layer in image.layers:
        assert len(registry.blob_gets(layer.digest, image.name)) == 1, f"registry GETs for {layer.digest}"
    from_peers = sum(p.metric("damselfly_p2p_bytes_total", 'source="peer"') for p in peers)
    from_seed = sum(p.metric("damselfly_p2p_bytes_total", 'source="seed"') for p in peers)
    from_origin = sum(p.metric("damselfly_p2p_bytes_total", 'source="origin"') for p in peers)
    image_bytes = sum(len(layer.data) for layer in image.layers)
    assert from_origin == 0, "no peer went to the registry"
    assert from_peers + from_seed == 4 * image_bytes + 2 * len(image.config)  # containerd also fetches the config
    # The seed's uplink is capped: the peers traded at least a whole image's worth among themselves.
    print(f"bytes from peers {from_peers:.0f}, from the seed {from_seed:.0f}, image {image_bytes}")
    assert from_peers >= image_bytes, f"peers traded {from_peers} bytes, seed sent {from_seed}"
    assert seed.metric("damselfly_upstream_bytes_total") == sum(len(layer.data) for layer in image.layers) + \
        len(image.config)
