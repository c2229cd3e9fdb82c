"""What nydusd sends a P2P cluster: a HEAD for a blob's size, then many ranged GETs, 4 at a time.

nydusd reads a blob lazily, chunk by chunk, from every node at once; each node's daemon must
answer those ranges with the exact bytes while the registry is read once for the whole cluster.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import httpx

from tests.integration.test_p2p_cluster import cluster  # noqa: F401 - the fixture, shared
from testkit.daemon import Damselfly
from testkit.images import build_image, push_image
from testkit.wait import wait_until

MiB = 1024 * 1024
KiB = 1024
BLOB_SIZE = 24 * MiB
RANDOM_READS = 20  # per peer, besides the blob's head and tail
CONCURRENT_READS = 4  # nydusd's default number of fetch workers per blob
TIMEOUT = httpx.Timeout(60, connect=10)  # every call; the whole run is bounded below too
RUN_DEADLINE = 240


@dataclass
class Nydusd:
    """One simulated nydusd: the node it reads through and how it names the registry."""

    node: Damselfly
    params: dict[str, str] = field(default_factory=dict)  # ?ns= as containerd-style mirrors send
    headers: dict[str, str] = field(default_factory=dict)  # X-Dragonfly-Registry as nydusd's mirrors config


def ranges(seed: int, size: int) -> list[tuple[int, int]]:
    """About 1 MiB reads at random offsets, plus the blob's first and last bytes (nydusd reads its tail)."""
    rng = random.Random(seed)
    reads = [(0, MiB - 1), (size - MiB, size - 1)]
    for _ in range(RANDOM_READS):
        length = rng.randint(768 * KiB, 1280 * KiB)
        first = rng.randrange(0, size - length + 1)
        reads.append((first, first + length - 1))
    rng.shuffle(reads)
    return reads


async def head_size(client: httpx.AsyncClient, nydusd: Nydusd, path: str) -> int:
    response = await client.head(f"{nydusd.node.url}{path}", params=nydusd.params, headers=nydusd.headers)
    assert response.status_code == 200, f"HEAD on {nydusd.node.url}: {response.status_code}"
    return int(response.headers["Content-Length"])


async def read_range(client: httpx.AsyncClient, nydusd: Nydusd, path: str, first: int, last: int, size: int,
                     data: bytes, slots: asyncio.Semaphore) -> None:
    async with slots:
        response = await client.get(f"{nydusd.node.url}{path}", params=nydusd.params,
                                    headers={**nydusd.headers, "Range": f"bytes={first}-{last}"})
    where = f"{nydusd.node.url} bytes {first}-{last}"
    assert response.status_code == 206, f"{where}: {response.status_code} {response.text[:300]}"
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{size}", where
    assert int(response.headers["Content-Length"]) == last - first + 1, where
    assert response.content == data[first:last + 1], f"{where}: wrong bytes"


async def nydusd_reads(nydusd: Nydusd, seed: int, path: str, data: bytes) -> int:
    """HEAD for the size, then every range, CONCURRENT_READS in flight; returns the size the HEAD gave."""
    slots = asyncio.Semaphore(CONCURRENT_READS)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=httpx.Limits(max_connections=CONCURRENT_READS)) as client:
        size = await head_size(client, nydusd, path)
        assert size == len(data), f"HEAD on {nydusd.node.url} says {size} bytes"
        await asyncio.gather(*(read_range(client, nydusd, path, first, last, size, data, slots)
                               for first, last in ranges(seed, size)))
        return await head_size(client, nydusd, path)  # again, now that the node holds the blob


async def all_nydusd(readers: list[Nydusd], path: str, data: bytes) -> list[int]:
    runs = asyncio.gather(*(nydusd_reads(reader, 7919 + i, path, data) for i, reader in enumerate(readers)))
    return await asyncio.wait_for(runs, RUN_DEADLINE)


def test_nydusd_range_reads_on_every_peer_load_the_registry_once(registry, registry_client,
                                                                  cluster) -> None:  # noqa: F811
    """Every peer at once: HEAD size, ~1 MiB ranges at random offsets; exact bytes, the registry sends the blob once."""
    image = build_image("nydus/traffic", [BLOB_SIZE])
    push_image(registry_client, image)
    blob = image.layers[1]  # the random data; layer 0 is busybox, shared with other tests
    seed = cluster(seed=True)
    peers = [cluster() for _ in range(3)]
    wait_until(lambda: cluster.scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == 4, 20, "hosts to join")
    readers = [
        Nydusd(peers[0], params={"ns": registry.host}),
        Nydusd(peers[1], params={"ns": registry.host}),
        Nydusd(peers[2], headers={"X-Dragonfly-Registry": registry.url}),  # nydusd sends the URL, with its scheme
    ]

    sizes = asyncio.run(all_nydusd(readers, f"/v2/{image.name}/blobs/{blob.digest}", blob.data))

    assert sizes == [len(blob.data)] * len(readers), "HEAD from the cache"
    # The reads covered part of the blob; each node finishes the whole of it in the background.
    for node in [seed, *peers]:
        wait_until(lambda node=node: node.metric("damselfly_store_blobs") == 1, 60, f"the blob stored on {node.url}")
    # The seed fetched it in ranges, the ones readers waited for first: each byte once.
    wait_until(lambda: sum(e.bytes for e in registry.blob_gets(blob.digest, image.name)) >= len(blob.data), 10,
               "the registry's access log")
    gets = registry.blob_gets(blob.digest, image.name)
    assert sum(e.bytes for e in gets) == len(blob.data), "blob bytes the registry sent for the whole cluster"
    assert all(e.status == 206 for e in gets), "range requests only"
    assert sum(p.metric("damselfly_p2p_bytes_total", 'source="origin"') for p in peers) == 0, "a peer read the registry"
    assert sum(p.metric("damselfly_p2p_bytes_total") for p in peers) == 3 * len(blob.data)
    assert seed.metric("damselfly_upstream_bytes_total") == len(blob.data)


def test_nydusd_ping_urls_answer_on_a_peer(cluster) -> None:  # noqa: F811
    """nydusd's mirror health check (ping_url) must get a 2xx, or it stops using the mirror."""
    peer = cluster()
    for path in ("/v2", "/v2/", "/healthy"):
        response = httpx.get(f"{peer.url}{path}", timeout=10)  # redirects not followed: nydusd needs a 2xx here
        assert 200 <= response.status_code < 300, f"GET {path}: {response.status_code} {response.text[:200]}"


def test_a_range_deep_in_a_cold_blob_is_fetched_first(registry, registry_client, cluster) -> None:  # noqa: F811
    """The seed does not stream the blob from its start to reach a read at 20 MiB: it asks the
    registry for that piece first, and for the rest only once the reader is quiet, each byte once."""
    image = build_image("nydus/deep", [BLOB_SIZE])
    push_image(registry_client, image)
    blob = image.layers[1]
    seed, peer = cluster(seed=True), cluster()
    wait_until(lambda: cluster.scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == 2, 20, "hosts to join")
    first, last = 20 * MiB + 100, 20 * MiB + 300 * KiB
    response = httpx.get(f"{peer.url}/v2/{image.name}/blobs/{blob.digest}", params={"ns": registry.host},
                         headers={"Range": f"bytes={first}-{last}"}, timeout=TIMEOUT)
    assert response.status_code == 206 and response.content == blob.data[first:last + 1]

    for node in (seed, peer):
        wait_until(lambda node=node: node.metric("damselfly_store_blobs") == 1, 60, f"the blob stored on {node.url}")
    gets = registry.blob_gets(blob.digest, image.name)  # in the order they finished
    assert all(e.status == 206 for e in gets), "range requests only"
    assert gets[0].bytes <= 2 * MiB, "the piece the reader waited for (and the next) came first, alone"
    assert sum(e.bytes for e in gets) == len(blob.data), "each byte once"
    assert peer.metric("damselfly_p2p_bytes_total", 'source="origin"') == 0


def test_peers_reading_the_same_piece_are_relayed_by_the_seed(registry, registry_client, cluster) -> None:  # noqa: F811
    """Four peers read the same range of a cold blob at once: the seed sends the piece to
    one and points the others at peers getting it; every byte is right and the registry
    sends it once."""
    image = build_image("nydus/relay", [BLOB_SIZE])
    push_image(registry_client, image)
    blob = image.layers[1]
    seed = cluster(seed=True, extra=["--upload-rate", "2MB"])  # the seed's link is what relaying spares
    peers = [cluster() for _ in range(4)]
    wait_until(lambda: cluster.scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == 5, 20, "hosts to join")
    first, last = 10 * MiB + 100, 10 * MiB + 100 * KiB
    readers = [Nydusd(peer, params={"ns": registry.host}) for peer in peers]

    async def read_all() -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            slots = asyncio.Semaphore(len(readers))
            path = f"/v2/{image.name}/blobs/{blob.digest}"
            await asyncio.gather(*(read_range(client, reader, path, first, last, len(blob.data), blob.data, slots)
                                   for reader in readers))

    asyncio.run(asyncio.wait_for(read_all(), RUN_DEADLINE))

    relayed = seed.metric("damselfly_upload_refused_total", 'reason="relayed"')
    assert relayed >= 3, "the second, third and fourth asker of the piece go to a peer that has or gets it"
    assert sum(p.metric("damselfly_p2p_bytes_total", 'source="peer"') for p in peers) > 0
    for node in [seed, *peers]:
        wait_until(lambda node=node: node.metric("damselfly_store_blobs") == 1, 90, f"the blob stored on {node.url}")
    assert sum(e.bytes for e in registry.blob_gets(blob.digest, image.name)) == len(blob.data)
