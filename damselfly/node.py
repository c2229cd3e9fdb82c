"""The composition root: one node, built whole from its typed settings.

Every part gets what it needs when it is made, and the node's role is decided here, once:
a seed reads the origin (a task its peers read in ranges, by ranges), offers what it
fetches to the P2P network and takes seed triggers; a peer reads through the network,
asking the registry only whether a caller may have a blob and how long it is. `damselfly
daemon` builds a seed or a peer; `damselfly run` a seed with its scheduler and its
manager beside it; `damselfly scheduler` a SchedulerNode.

With a manager, each of them registers and keeps alive (damselfly.network.manager_client),
and applies its cluster's configuration as it changes: a scheduler its candidate parent
limit and back-to-source allowance, a daemon its upload limits and block list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from aiohttp import web
from prometheus_client import Counter

from damselfly.blobs.service import BlobService
from damselfly.blobs.sourcing import NetworkSourcing, SeedSourcing, Sourcing
from damselfly.core.blocklist import BlockList
from damselfly.core.dynconfig import ClusterConfig, upload_limits
from damselfly.core.oci import OCIError, registry_name, split_registry
from damselfly.core.wire import HostAnnounce
from damselfly.core.jobs import Member, Statement
from damselfly.lib.kv import KV, MemoryKV, RedisKV, connect
from damselfly.lib.serve import ACCESS_LOG_FORMAT, SHUTDOWN_GRACE, Site, SocketSite
from damselfly.lib.sealed import load_private_key, open_on_host
from damselfly.lib.signed import Signer, Verifier
from damselfly.lib.tls import KEY_FILE, ClusterTLS
from damselfly.mirror.app import Mirror
from damselfly.mirror.metrics import MirrorMetrics
from damselfly.mirror.upstream import UpstreamResolver
from damselfly.network.jobboard import JobBoard
from damselfly.network.manager_client import ManagerClient, Membership
from damselfly.network.metrics import PeerMetrics
from damselfly.network.scheduler_client import SchedulerClient
from damselfly.network.swarm import Network
from damselfly.network.tags import ClusterTags
from damselfly.registry.client import AsyncRegistryClient
from damselfly.scheduler.app import Scheduler
from damselfly.scheduler.preheat import PreheatWorker
from damselfly.settings import (ManagerLink, ManagerSettings, MirrorSettings, PeerSettings, SchedulerSettings,
                                advertised_url)
from damselfly.storage.store import BlobStore
from damselfly.upload.server import PreheatDuty, SeedDuty, UploadServer

if TYPE_CHECKING:
    from damselfly.manager.api import ManagerService

log = logging.getLogger("damselfly.node")
SCHEDULER_FIRST_WAIT = 5.0  # run: how long its seed waits for its scheduler's registration, to join its cluster


@dataclass(frozen=True)
class EmbeddedScheduler:
    """The scheduler `damselfly run` serves in the seed's process: its limits and its address."""

    settings: SchedulerSettings
    listen: tuple[str, int]


@dataclass(frozen=True)
class EmbeddedManager:
    """The manager `damselfly run` serves in the seed's process (SQLite in the node's data
    dir), which its scheduler and seed register with. If its port is taken, the node runs
    without it."""

    settings: ManagerSettings


def local_url(listen: tuple[str, int], tls: bool) -> str:
    """How this machine reaches a server of its own: all interfaces mean loopback."""
    host, port = listen
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


class SchedulerNode:
    """A scheduler and, with a manager, its membership: `damselfly scheduler`, and the
    scheduler inside `damselfly run`."""

    def __init__(self, settings: SchedulerSettings, listen: tuple[str, int], tls: ClusterTLS | None,
                 manager: ManagerLink | None = None, local_kv: KV | None = None) -> None:
        """``local_kv``: shared state in this process (`run`: with its manager), used without --redis."""
        self.kv = connect(settings.redis) if settings.redis else None
        self.scheduler = Scheduler(settings, kv=self.kv)
        self.listen = listen
        self.tls = tls
        self.manager = manager
        # The manager admits a member only under its certificate's name; without one, this
        # host and port, the same after a restart (so the record comes back active).
        self.host_id = tls.identity.name if tls is not None else f"{socket.gethostname()}:{listen[1]}"
        self.membership: ManagerClient | None = None
        board = JobBoard(RedisKV(self.kv) if self.kv is not None else local_kv or MemoryKV())
        self.preheat = PreheatWorker(board, self._members, lambda: self.membership.cluster_id if self.membership
                                     else None, self.host_id, tls)
        self._preheat_run: asyncio.Task[None] | None = None

    def _members(self) -> list[Member]:
        """The live hosts a preheat may go to."""
        state = self.scheduler.state
        return [Member(host.id, host.upload_url, host.is_seed, state.uploads.get(host.id, 0))
                for host in state.hosts.values() if host.upload_url and state.fresh(host)]

    @property
    def url(self) -> str:
        """Where daemons reach this scheduler, as the manager hands it out."""
        return advertised_url(self.listen[0], self.listen[1], self.tls is not None)

    def site(self) -> Site:
        app = self.scheduler.application()
        if self.kv is not None:
            kv = self.kv  # closed after the app's own cleanup, whose last write to Redis needs it

            async def close_kv(_: web.Application) -> None:
                await kv.aclose()
            app.on_cleanup.append(close_kv)
        return Site(app, *self.listen, self.tls.server_context() if self.tls else None)

    async def started(self) -> None:
        self._preheat_run = asyncio.create_task(self.preheat.run(), name="preheat worker")
        if self.manager is not None:
            await self.join(self.manager)

    async def join(self, manager: ManagerLink) -> None:
        """Register with ``manager`` and keep alive, applying the cluster's configuration."""
        self.membership = ManagerClient(manager.url, Membership("scheduler", self.host_id, self.url,
                                                                cluster=manager.cluster),
                                        tls=self.tls, on_config=self.scheduler.apply_config)
        await self.membership.start()

    async def stopping(self) -> None:
        if self._preheat_run is not None:
            self._preheat_run.cancel()
            await asyncio.gather(self._preheat_run, return_exceptions=True)
        if self.membership is not None:
            await self.membership.close()


def _total(counter: Counter) -> int:
    """A counter's value summed over its labels."""
    return int(sum(sample.value for metric in counter.collect() for sample in metric.samples
                   if sample.name.endswith("_total")))


class Node:
    """The mirror, the upload server and the scheduler client of one host (and, for `run`,
    the scheduler and the manager).

    ``manager``: a ManagerLink to register with a manager elsewhere (`daemon --manager`),
    or an EmbeddedManager to serve one and register with it (`run`).
    """

    def __init__(self, mirror_settings: MirrorSettings, peer: PeerSettings,
                 scheduler: EmbeddedScheduler | None = None,
                 manager: ManagerLink | EmbeddedManager | None = None) -> None:
        self.peer_settings = peer
        self.embedded_scheduler = scheduler
        self.local_kv = MemoryKV()  # `run`: its manager's jobs reach its scheduler here
        self.scheduler_node = (SchedulerNode(scheduler.settings, scheduler.listen, peer.tls, local_kv=self.local_kv)
                               if scheduler is not None else None)
        self.manager = manager
        self.membership: ManagerClient | None = None
        self._manager_socket: socket.socket | None = None
        self._manager_service: ManagerService | None = None
        self._manager_runner: web.AppRunner | None = None
        self._manager_start: asyncio.Task[None] | None = None
        self.metrics = metrics = MirrorMetrics()
        store = BlobStore(mirror_settings.data_dir, mirror_settings.cache_quota, mirror_settings.cache_high_watermark,
                          mirror_settings.cache_low_watermark, on_evict=lambda _: metrics.evictions.inc())
        metrics.watch_store(store)
        registry_client = AsyncRegistryClient(mirror_settings.connect_timeout, mirror_settings.upstream_read_timeout)
        resolver = UpstreamResolver(mirror_settings.registries, mirror_settings.default_registry)
        self.peer_metrics = peer_metrics = PeerMetrics(metrics.registry)
        host = HostAnnounce(id=peer.resolved_host_id, upload_url=peer.advertised_url, idc=peer.idc,
                            location=peer.location, seed=peer.seed, upload_slots=peer.upload_slots)
        self.scheduler = SchedulerClient(peer.schedulers, host, tls=peer.tls)
        self.network = Network(self.scheduler, registry_client, peer_metrics, is_seed=peer.seed, tls=peer.tls)
        # With a cluster identity, tag records are signed by the seed that resolved them and
        # taken only with a seed's signature.
        cluster = ClusterTags(self.network, Signer.of_tls_dir(peer.tls.directory) if peer.tls and peer.seed else None,
                              Verifier.of_tls_dir(peer.tls.directory) if peer.tls else None)
        sourcing: Sourcing
        seed_duty: SeedDuty | None
        if peer.seed:
            sourcing = SeedSourcing(registry_client, metrics.source_bytes, self.network)
            seed_duty = SeedDuty(registry_for_peers(resolver), self.network.seed_failed, cluster.confirm)
        else:
            sourcing, seed_duty = NetworkSourcing(registry_client, self.network), None
        self.blobs = BlobService(store, registry_client, sourcing, metrics,
                                 stall_timeout=mirror_settings.download_stall_timeout)
        self.mirror = mirror = Mirror(mirror_settings, self.blobs, registry_client, resolver, metrics, cluster)
        if peer.seed:  # a seed confirms tags itself, at the registry its own map names
            upstream_of = registry_for_peers(resolver)
            cluster.resolve_here = lambda confirm: mirror.confirm_tag(confirm, upstream_of(confirm.registry))
        # `run` without a cluster identity: its manager signs preheat statements with a key
        # only this process holds; with one, the manager's certificate signs them.
        self.statement_key = secrets.token_bytes(32) if scheduler is not None and peer.tls is None else None
        verifier = (Verifier.of_tls_dir(peer.tls.directory) if peer.tls is not None
                    else Verifier(shared_key=self.statement_key))
        preheat = PreheatDuty(registry_for_peers(resolver), self.mirror.keep_preheated,
                              credentials_opener(peer.tls, peer.resolved_host_id), verifier.verify,
                              mirror_settings.cache_quota)
        self.upload = UploadServer(self.blobs, self.network, seed_duty, peer_metrics, metrics.registry,
                                   peer.upload_slots, rate=peer.upload_rate, send_timeout=peer.peer_send_timeout,
                                   preheat=preheat)

    def sites(self, listen: tuple[str, int]) -> list[Site]:
        """The node's servers: the scheduler if embedded, the mirror on ``listen``, the
        upload server. An embedded manager's port is taken here too (it is served once its
        database is open, see ``started``); if it is in use, the node runs without it."""
        tls = self.peer_settings.tls
        sites = [Site(self.mirror.application(), *listen),
                 Site(self.upload.application(), self.peer_settings.upload_host, self.peer_settings.upload_port,
                      tls.server_context() if tls else None)]
        if self.scheduler_node is not None:
            sites.insert(0, self.scheduler_node.site())
        if isinstance(self.manager, EmbeddedManager):
            self._manager_socket = _bind_or_warn(self.manager.settings.listen)
        return sites

    async def started(self) -> None:
        if self.scheduler_node is not None:
            await self.scheduler_node.started()  # its preheat worker; it joins run's manager below
        await self.scheduler.start()
        if self._manager_socket is not None:
            self._manager_start = asyncio.create_task(self._serve_embedded_manager(self._manager_socket),
                                                      name="embedded manager")
        elif isinstance(self.manager, ManagerLink):
            await self.join(self.manager)

    async def join(self, manager: ManagerLink) -> None:
        """Register this daemon with ``manager`` (a seed peer or a peer) and keep alive,
        applying the cluster's configuration; without --scheduler, take the cluster's
        schedulers from it too."""
        peer = self.peer_settings
        fixed = bool(peer.schedulers)
        membership = Membership("seed-peer" if peer.seed else "peer", peer.resolved_host_id, peer.advertised_url,
                                peer.idc, peer.location, cluster=manager.cluster,
                                scheduler_url=peer.schedulers[0] if fixed else None)
        self.membership = ManagerClient(
            manager.url, membership, tls=peer.tls, on_config=self.apply_cluster_config,
            on_schedulers=None if fixed else self.scheduler.set_schedulers,
            current_schedulers=lambda: self.scheduler.members,
            refresh_interval=manager.scheduler_refresh_interval, https_only=peer.tls is not None,
            counters=lambda: (_total(self.peer_metrics.uploaded), _total(self.metrics.served_bytes)))
        await self.membership.start()

    def apply_cluster_config(self, config: ClusterConfig) -> None:
        """The cluster's upload limits (else this host's flags) and its block list, from now on."""
        rate, slots = upload_limits(config, self.peer_settings.upload_rate, self.peer_settings.upload_slots)
        if (rate, slots) != (self.upload.rate, self.upload.slots):
            log.info("uploads: %s, %d slots", f"at most {rate} bytes/s" if rate else "no rate cap", slots)
        self.upload.set_limits(rate, slots)
        self.scheduler.set_upload_slots(slots)
        block_list, problems = BlockList.parse(config.block_list)
        for problem in problems:
            log.warning("block list entry skipped (this daemon cannot read it): %s", problem)
        self.mirror.set_block_list(block_list)

    async def _serve_embedded_manager(self, sock: socket.socket) -> None:
        """Open the embedded manager's database off the event loop (the mirror serves
        meanwhile), serve it on its port, then register the scheduler and the seed with it."""
        from damselfly.manager.api import server_context, start_manager

        assert isinstance(self.manager, EmbeddedManager)
        settings = self.manager.settings
        try:
            signer = Signer.with_shared_key(self.statement_key) if self.statement_key is not None else None
            service = await start_manager(settings, JobBoard(self.local_kv), signer)
        except RuntimeError as error:
            sock.close()
            log.error("the embedded manager cannot start (%s): running without it and its console", error)
            return
        self._manager_service = service
        runner = web.AppRunner(service.application(), access_log_format=ACCESS_LOG_FORMAT,
                               shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        self._manager_runner = runner
        context: ssl.SSLContext | None = server_context(settings.tls) if settings.tls is not None else None
        await SocketSite(runner, sock, ssl_context=context).start()  # a TLS handshake has a deadline
        link = ManagerLink(local_url(settings.listen, settings.tls is not None))
        log.info("manager and console at %s", link.url)
        if self.scheduler_node is not None:
            await self.scheduler_node.join(link)
            assert self.scheduler_node.membership is not None
            with contextlib.suppress(TimeoutError):  # its seed then joins the scheduler's cluster
                async with asyncio.timeout(SCHEDULER_FIRST_WAIT):
                    await self.scheduler_node.membership.registered.wait()
        await self.join(link)

    async def stopping(self) -> None:
        if self._manager_start is not None:
            self._manager_start.cancel()
            await asyncio.gather(self._manager_start, return_exceptions=True)
        if self.membership is not None:
            await self.membership.close()
        if self.scheduler_node is not None:
            await self.scheduler_node.stopping()
        await self.blobs.close()  # downloads first: they use the network's sessions
        await self.network.close()
        await self.scheduler.close()
        if self._manager_runner is not None:
            await self._manager_runner.cleanup()
        if self._manager_service is not None:
            await self._manager_service.close()
        elif self._manager_socket is not None:
            self._manager_socket.close()


def _bind_or_warn(listen: tuple[str, int]) -> socket.socket | None:
    """The embedded manager's listening socket, or None (and a warning) when the port is taken."""
    host, port = listen
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=128)
    except OSError as error:
        log.warning("the manager's address %s:%d is not free (%s): running without the embedded manager and its "
                    "console; give --manager-listen another address to have them", host, port,
                    error.strerror or error)
        return None


def credentials_opener(tls: ClusterTLS | None, host_id: str) -> Callable[[str, Statement], str]:
    """How this host opens a preheat job's credentials sealed for it (with its cluster key)."""
    key = load_private_key((tls.directory / KEY_FILE).read_bytes()) if tls is not None else None
    return lambda value, statement: open_on_host(value, key, statement.credentials_context(host_id))


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
