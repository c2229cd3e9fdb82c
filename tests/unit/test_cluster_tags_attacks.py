"""Attacks on the cluster's tag confirmations (damselfly.network.tags), without processes.
Each test asserts the SAFE behaviour: it fails while the hole it names is open."""

from __future__ import annotations

import asyncio
from typing import Any

from damselfly.core.wire import TagConfirm
from damselfly.network.tags import ClusterTags


class _Network:
    """What ClusterTags needs of the P2P network: a host id and a place to spawn work."""

    host_id = "seed-1"

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self.tasks.append(task)
        return task


def test_a_flood_of_tag_confirmations_does_not_run_unbounded_resolutions_at_once() -> None:
    """Any member (or a local client of any node, pulling tags of a registry it names)
    sends a seed TagConfirms for distinct tags. Each is spaced per tag only: the seed starts
    a resolution for each at once (up to MAX_SPACED = 10 000 every 30 s), and each holds up
    to 65 manifests of 4 MiB in memory (an index and its children, from a registry the
    attacker runs and slows down), writes them to the seed's cache (evicting what it holds
    for the cluster) and 65 records to the scheduler. Nothing bounds how many run at once."""
    running = 0
    peak = 0
    release = asyncio.Event()

    async def resolve_here(confirm: TagConfirm) -> None:  # a slow registry: each resolution stays open
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    async def scenario() -> int:
        network = _Network()
        cluster = ClusterTags(network)  # type: ignore[arg-type]
        cluster.resolve_here = resolve_here
        for i in range(2000):
            cluster.confirm(TagConfirm("evil.example", "flood/app", f"t{i}", "Bearer x"))
        await asyncio.sleep(0.05)
        seen = peak
        release.set()
        await asyncio.gather(*network.tasks, return_exceptions=True)
        return seen

    peak_running = asyncio.run(scenario())
    assert peak_running <= 64, f"{peak_running} tag resolutions ran at once on the seed, for one member's flood"
