"""The composition root: one node, built whole from its typed settings.

Every part gets what it needs when it is made, and the node's role is decided here, once:
a seed reads the origin (a task its peers read in ranges, by ranges), offers what it
fetches to the P2P network and takes seed triggers; a peer reads through the network,
asking the registry only whether a caller may have a blob and how long it is. `damselfly
daemon` builds a seed or a peer; `damselfly run` a seed with its scheduler beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from damselfly.blobs.service import BlobService
from damselfly.blobs.sourcing import NetworkSourcing, SeedSourcing, Sourcing
from damselfly.core.oci import OCIError, registry_name, split_registry
from damselfly.core.wire import HostAnnounce
from damselfly.lib.serve import Site
from damselfly.mirror.app import Mirror
from damselfly.mirror.metrics import MirrorMetrics
from damselfly.mirror.upstream import UpstreamResolver
from damselfly.network.metrics import PeerMetrics
from damselfly.network.scheduler_client import SchedulerClient
from damselfly.network.swarm import Network
from damselfly.registry.client import AsyncRegistryClient
from damselfly.scheduler.app import Scheduler
from damselfly.settings import MirrorSettings, PeerSettings, SchedulerSettings
from damselfly.storage.store import BlobStore
from damselfly.upload.server import SeedDuty, UploadServer


@dataclass(frozen=True)
class EmbeddedScheduler:
    """The scheduler `damselfly run` serves in the seed's process: its limits and its address."""

    settings: SchedulerSettings
    listen: tuple[str, int]


class Node:
    """The mirror, the upload server and the scheduler client of one host (and, for `run`, the scheduler)."""

    def __init__(self, mirror_settings: MirrorSettings, peer: PeerSettings,
                 scheduler: EmbeddedScheduler | None = None) -> None:
        self.peer_settings = peer
        self.embedded_scheduler = scheduler
        metrics = MirrorMetrics()
        store = BlobStore(mirror_settings.data_dir, mirror_settings.cache_quota, mirror_settings.cache_high_watermark,
                          mirror_settings.cache_low_watermark, on_evict=lambda _: metrics.evictions.inc())
        metrics.watch_store(store)
        registry_client = AsyncRegistryClient(mirror_settings.connect_timeout, mirror_settings.upstream_read_timeout)
        resolver = UpstreamResolver(mirror_settings.registries, mirror_settings.default_registry)
        peer_metrics = PeerMetrics(metrics.registry)
        host = HostAnnounce(id=peer.resolved_host_id, upload_url=peer.advertised_url, idc=peer.idc,
                            location=peer.location, seed=peer.seed, upload_slots=peer.upload_slots)
        self.scheduler = SchedulerClient(peer.schedulers, host, tls=peer.tls)
        self.network = Network(self.scheduler, registry_client, peer_metrics, is_seed=peer.seed, tls=peer.tls)
        sourcing: Sourcing
        seed_duty: SeedDuty | None
        if peer.seed:
            sourcing = SeedSourcing(registry_client, metrics.source_bytes, self.network)
            seed_duty = SeedDuty(registry_for_peers(resolver), self.network.seed_failed)
        else:
            sourcing, seed_duty = NetworkSourcing(registry_client, self.network), None
        self.blobs = BlobService(store, registry_client, sourcing, metrics,
                                 stall_timeout=mirror_settings.download_stall_timeout)
        self.mirror = Mirror(mirror_settings, self.blobs, registry_client, resolver, metrics)
        self.upload = UploadServer(self.blobs, self.network, seed_duty, peer_metrics, metrics.registry,
                                   peer.upload_slots, rate=peer.upload_rate, send_timeout=peer.peer_send_timeout)

    def sites(self, listen: tuple[str, int]) -> list[Site]:
        """The node's servers: the scheduler if embedded, the mirror on ``listen``, the upload server."""
        tls = self.peer_settings.tls
        sites = [Site(self.mirror.application(), *listen),
                 Site(self.upload.application(), self.peer_settings.upload_host, self.peer_settings.upload_port,
                      tls.server_context() if tls else None)]
        if self.embedded_scheduler is not None:
            sites.insert(0, Site(Scheduler(self.embedded_scheduler.settings).application(),
                                 *self.embedded_scheduler.listen, tls.server_context() if tls else None))
        return sites

    async def started(self) -> None:
        await self.scheduler.start()

    async def stopping(self) -> None:
        await self.blobs.close()  # downloads first: they use the network's sessions
        await self.network.close()
        await self.scheduler.close()


def registry_for_peers(resolver: UpstreamResolver) -> Callable[[str], str]:
    """How a seed reaches the registry a peer names in a trigger: by this node's own map.

    Peers send the registry name of the upstream they resolved, which is a mapped name or
    the name of a mapped URL (``--registry local=http://127.0.0.1:5000`` is reached as
    ``127.0.0.1:5000``); anything else means ``https://NAME``. Raises ValueError for
    anything but host[:port] (a trigger names a registry, it never points at one) and for
    a name the rule refuses: the trigger gets 400.
    """
    def resolve(name: str) -> str:
        name = registry_name(name)
        for url in resolver.registries.values():
            if split_registry(url)[1] == name:
                return url
        try:
            return resolver.for_name(name)
        except OCIError as exc:
            raise ValueError(exc.message) from None

    return resolve
