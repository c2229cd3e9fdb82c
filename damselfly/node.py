"""A daemon: the mirror, the upload server and the scheduler client of one node."""

from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from damselfly.core.oci import OCIError
from damselfly.lib.serve import Site
from damselfly.network.metrics import PeerMetrics
from damselfly.network.swarm import Network
from damselfly.upload.server import UploadServer
from damselfly.mirror.app import Mirror
from damselfly.mirror.upstream import UpstreamResolver
from damselfly.network.scheduler_client import SchedulerClient
from damselfly.settings import MirrorSettings, PeerSettings
from damselfly.core.wire import HostAnnounce


class Daemon:
    def __init__(self, mirror_settings: MirrorSettings, peer: PeerSettings) -> None:
        self.mirror = Mirror(mirror_settings)
        self.peer_settings = peer
        self.metrics = PeerMetrics(self.mirror.metrics.registry)
        host = HostAnnounce(id=peer.resolved_host_id, upload_url=peer.advertised_url, idc=peer.idc,
                        location=peer.location, seed=peer.seed, upload_slots=peer.upload_slots)
        self.scheduler = SchedulerClient(peer.schedulers, host, tls=peer.tls)
        self.network = Network(self.scheduler, self.mirror.registry_client, self.metrics, is_seed=peer.seed,
                               tls=peer.tls)
        self.mirror.blobs.network = self.network
        self.upload = UploadServer(self.mirror.blobs, self.metrics, self.mirror.metrics.registry, peer.upload_slots,
                                   rate=peer.upload_rate, send_timeout=peer.peer_send_timeout,
                                   resolve_registry=registry_for_peers(self.mirror.resolver))

    def sites(self, listen: tuple[str, int]) -> list[Site]:
        tls = self.peer_settings.tls.server_context() if self.peer_settings.tls else None
        return [Site(self.mirror.application(), *listen),
                Site(self.upload.application(), self.peer_settings.upload_host, self.peer_settings.upload_port, tls)]

    async def started(self) -> None:
        await self.scheduler.start()

    async def stopping(self) -> None:
        await self.mirror.blobs.close()  # downloads first: they use the network's sessions
        await self.network.close()
        await self.scheduler.close()


def registry_for_peers(resolver: UpstreamResolver) -> Callable[[str], str]:
    """How a seed reaches the registry a peer names in a trigger: by this node's own map.

    Peers send the host[:port] of the upstream they resolved, which is a mapped name or
    the host of a mapped URL (``--registry local=http://127.0.0.1:5000`` is reached as
    ``127.0.0.1:5000``); anything else means ``https://NAME``. Raises ValueError for a
    name the rule refuses (the trigger gets 400).
    """
    def resolve(name: str) -> str:
        for url in resolver.registries.values():
            if urlsplit(url).netloc == name.lower():
                return url
        try:
            return resolver.for_name(name)
        except OCIError as exc:
            raise ValueError(exc.message) from None

    return resolve
