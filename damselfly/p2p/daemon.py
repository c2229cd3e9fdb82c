"""A daemon: the mirror, the upload server and the scheduler client of one node."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from aiohttp import web

from damselfly.p2p.metrics import PeerMetrics
from damselfly.p2p.network import Network
from damselfly.p2p.upload import UploadServer
from damselfly.proxy.app import Mirror, MirrorSettings
from damselfly.scheduler.client import HostInfo, SchedulerClient


@dataclass
class PeerSettings:
    schedulers: list[str]
    upload_host: str
    upload_port: int
    seed: bool = False
    idc: str = ""
    location: str = ""
    host_id: str = ""
    upload_slots: int = 16
    upload_rate: int | None = None  # bytes per second, None for no cap

    @property
    def advertised_url(self) -> str:
        host = self.upload_host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostbyname(socket.gethostname())
        return f"http://[{host}]:{self.upload_port}" if ":" in host else f"http://{host}:{self.upload_port}"


class Daemon:
    def __init__(self, mirror_settings: MirrorSettings, peer: PeerSettings) -> None:
        self.mirror = Mirror(mirror_settings)
        self.peer_settings = peer
        self.metrics = PeerMetrics(self.mirror.metrics.registry)
        host = HostInfo(id=peer.host_id or f"{socket.gethostname()}:{peer.upload_port}", upload_url=peer.advertised_url,
                        idc=peer.idc, location=peer.location, seed=peer.seed, upload_slots=peer.upload_slots)
        self.scheduler = SchedulerClient(peer.schedulers, host)
        self.network = Network(self.scheduler, self.mirror.registry_client, self.metrics, is_seed=peer.seed)
        self.mirror.blobs.network = self.network
        self.upload = UploadServer(self.mirror.blobs, self.metrics, self.mirror.metrics.registry, peer.upload_slots,
                                   rate=peer.upload_rate, send_timeout=self.mirror.settings.read_timeout)

    def sites(self, listen: tuple[str, int]) -> list[tuple[web.Application, str, int]]:
        return [(self.mirror.application(), *listen),
                (self.upload.application(), self.peer_settings.upload_host, self.peer_settings.upload_port)]

    async def started(self) -> None:
        await self.scheduler.start()

    async def stopping(self) -> None:
        await self.mirror.blobs.close()  # downloads first: they use the network's sessions
        await self.network.close()
        await self.scheduler.close()
