"""The cluster in a box: a registry host, a seed host with the scheduler, N nodes each with
containerd and a Damselfly daemon, all in network namespaces on shaped links.

Scenarios (the Dragonfly talk's, plus the common alternative):
- ociv1:        every node pulls straight from the registry;
- pull-through: every node pulls from a central docker-registry in proxy mode;
- p2p-cold:     through Damselfly, nothing cached anywhere;
- p2p-remote:   the blobs on the seed peer, not on the node (daemon caches emptied);
- p2p-local:    the blobs in the node's own daemon (containerd's store emptied; each daemon
                fetches them whole before the clock starts, if it has not yet);
- local-registry: a docker-registry on the node itself holds the image (the baseline
                that p2p-local is measured against).
The nydus scenarios start the same command from a lazy mount of the image's nydus form
(asked of the node's `damselfly nydus serve`, as nydus-snapshotter asks a running nydusd;
an overlay on it; `ctr run --rootfs`):
- nydus-cold:       chunks fetched straight from the registry;
- nydus-p2p-cold:   through the node's daemon, nothing cached anywhere;
- nydus-p2p-remote: the blobs on the seed peer, not on the node;
- nydus-p2p-local:  the blobs whole in the node's own daemon, the chunk cache empty;
- nydus-cache:      the chunks the command reads already in the node's chunk cache.
And a preheat through the manager:
- preheat:          every daemon emptied, then a preheat job with scope all_peers (POST
                    /api/v1/jobs on a manager sharing a Redis with the scheduler), timed
                    from the POST until the job reads SUCCESS; then every node starts the
                    image through its daemon as in p2p-local, from what the preheat placed.
                    The manager and Redis run (in the root namespace, on the bridge's
                    address) only when this scenario is chosen.
A node's start time runs from the pull's (or the mount's) start to the container command's exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import httpx
from benchmarks.cluster.netns import Host, Network, remove_stale
from benchmarks.sampling import Sampler
from damselfly.lib.tls import issue
from damselfly.nydus.service import ServiceClient, ServiceError
from damselfly.registry.blocking import RegistryClient as PullClient  # the harness's own RegistryClient pushes
from testkit.cluster import SchedulerProcess, start_peer
from testkit.containerd import Containerd
from testkit.daemon import Damselfly
from testkit.images import Image, push_image
from testkit.manager import Manager
from testkit.nydus import MountServiceProcess
from testkit.redis import RedisServer
from testkit.registry import Registry, RegistryClient
from testkit.tls import ca_dir
from testkit.wait import wait_until

OCI_SCENARIOS = ["ociv1", "pull-through", "p2p-cold", "p2p-remote", "p2p-local", "local-registry"]
NYDUS_SCENARIOS = ["nydus-cold", "nydus-p2p-cold", "nydus-p2p-remote", "nydus-p2p-local", "nydus-cache"]
PREHEAT_SCENARIOS = ["preheat"]
SCENARIOS = OCI_SCENARIOS + NYDUS_SCENARIOS + PREHEAT_SCENARIOS
NYDUS_TAG = "nydus"
REGISTRY_PORT = 5000
PROGRESS_INTERVAL = 5.0  # seconds between progress lines while nodes pull
DOWNLOAD_SAMPLE = 0.1  # seconds between reads of a node's link counter
PREHEAT_POLL = 0.1  # seconds between the harness's looks at a preheat job
PREHEAT_TIMEOUT = 1800  # the job's own timeout, in seconds
FIRST_BLOB_BYTES = 64 * 1024  # what the registry's link must have sent for a preheat's blobs to have begun


def p95(values: list[float]) -> float:
    """The nearest-rank 95th percentile (the slowest of 8 nodes; NaN for none)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] if ordered else float("nan")


def _reached(samples: list[tuple[float, int]], target: int) -> float | None:
    """The first sample's time at which the counter had reached ``target``."""
    return next((seconds for seconds, value in samples if value >= target), None)


def link_sampler(link: str, interval: float = 0.5, received: bool = False) -> Sampler:
    """Bytes a host has sent (or, with ``received``, taken in), read from its bridge-side link:
    what the registry served, or what reached a node, over time."""
    counter = Path(f"/sys/class/net/{link}/statistics/{'tx_bytes' if received else 'rx_bytes'}")
    base = int(counter.read_text())
    return Sampler(lambda: int(counter.read_text()) - base, interval)


@dataclass
class Node:
    host: Host
    workdir: Path
    containerd: Containerd | None = None
    daemon: Damselfly | None = None
    registry: Registry | None = None  # the node's own registry, for the local-registry baseline
    mount_service: MountServiceProcess | None = None  # `damselfly nydus serve`, for the nydus scenarios


@dataclass
class ScenarioResult:
    scenario: str
    image: str
    image_bytes: int
    nodes: int
    start_seconds: list[float]
    registry_bytes: int
    registry_requests: int
    ok: bool
    errors: list[str] = field(default_factory=list)
    # (seconds since the scenario started, bytes the registry host has sent so far), from its link's counter
    registry_timeline: list[tuple[float, int]] = field(default_factory=list)
    bound_seconds: float | None = None  # p2p-cold: the Kumar & Ross lower bound for the shaped rates
    bound_ratio: float | None = None  # the last node's download time over the bound
    fetched_bytes: list[int] = field(default_factory=list)  # nydus: blob bytes each node's lazy mount read
    # OCI pulls over the network: seconds until each node had taken in the image's bytes (the
    # rest of its start time is containerd's unpack and the run)
    download_seconds: list[float] = field(default_factory=list)
    seed_bytes: int = 0  # what the seed peer's host sent (pieces, and the scheduler's answers beside them)
    rounds: int = 1
    # preheat: seconds from the POST until the job read SUCCESS (one per round), and until the
    # registry's link had begun sending the blobs (the manager's and the scheduler's dispatch);
    # download_seconds then count from the POST too
    preheat_seconds: list[float] = field(default_factory=list)
    preheat_dispatch_seconds: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.start_seconds) if self.start_seconds else float("nan")

    @property
    def p95(self) -> float:
        return p95(self.start_seconds)


def merge_rounds(rounds: list[ScenarioResult]) -> ScenarioResult:
    """One scenario's rounds as one result. Starts, downloads and lazy reads are pooled (p50 and
    p95 are over every start of every round); each of a round's totals (registry bytes and
    requests, seed bytes, the bound ratio) becomes its low median, a value some round had,
    and the registry timeline is that of the round with the median registry bytes."""
    ratios = [r.bound_ratio for r in rounds if r.bound_ratio is not None]
    return replace(
        rounds[0],
        start_seconds=[s for r in rounds for s in r.start_seconds],
        registry_bytes=statistics.median_low(r.registry_bytes for r in rounds),
        registry_requests=statistics.median_low(r.registry_requests for r in rounds),
        ok=all(r.ok for r in rounds),
        errors=[e for r in rounds for e in r.errors],
        registry_timeline=sorted(rounds, key=lambda r: r.registry_bytes)[(len(rounds) - 1) // 2].registry_timeline,
        bound_ratio=statistics.median_low(ratios) if ratios else None,
        fetched_bytes=[b for r in rounds for b in r.fetched_bytes],
        download_seconds=[s for r in rounds for s in r.download_seconds],
        seed_bytes=statistics.median_low(r.seed_bytes for r in rounds),
        rounds=len(rounds),
        preheat_seconds=[s for r in rounds for s in r.preheat_seconds],
        preheat_dispatch_seconds=[s for r in rounds for s in r.preheat_dispatch_seconds],
    )


class Cluster:
    """Everything one run creates; ``close()`` removes it, whatever state it is in."""

    def __init__(self, workdir: Path, nodes: int, registry_rate: str, node_rate: str, delay: str | None,
                 log: Callable[[str], None] = print, preheat: bool = False) -> None:
        self.workdir = workdir
        self.log = log
        self.with_manager = preheat  # a manager and Redis beside the scheduler, for the preheat scenario
        remove_stale()
        self.network = Network()
        try:
            self.registry_host = self.network.add_host("reg", rate=registry_rate, delay=delay)
            self.proxy_host = self.network.add_host("ptc", rate=registry_rate, delay=delay)
            self.seed_host = self.network.add_host("seed", rate=node_rate, delay=delay)
            self.nodes = [Node(self.network.add_host(f"n{i}", rate=node_rate, delay=delay), workdir / f"n{i}")
                          for i in range(nodes)]
        except BaseException:
            self.network.close()
            raise
        self.registry = Registry(workdir / "registry", address=self.registry_host.address, port=REGISTRY_PORT,
                                 wrap=self.registry_host.command())
        self.proxy = Registry(workdir / "pull-through", address=self.proxy_host.address, port=REGISTRY_PORT,
                              wrap=self.proxy_host.command(),
                              extra_config={"proxy": {"remoteurl": f"http://{self.registry_host.address}:{REGISTRY_PORT}"}})
        self.scheduler: SchedulerProcess | None = None
        self.seed: Damselfly | None = None
        self.redis: RedisServer | None = None
        self.manager: Manager | None = None

    def start(self) -> None:
        self.log("starting docker-registry, the pull-through cache, the scheduler and the seed peer")
        self.registry.start()
        self.proxy.start()
        joins: list[str] = []
        if self.with_manager:
            self._start_manager()
            assert self.manager is not None and self.redis is not None
            joins = ["--manager", self.manager.url, "--redis", self.redis.url]
        # Members on a network: mutual TLS with certificates from this run's CA, as deployed.
        self.scheduler = SchedulerProcess(self.workdir / "scheduler", port=8002, host=self.seed_host.address,
                                          wrap=self.seed_host.command(), tls=True, extra=joins).start()
        if self.manager is not None:
            with self.manager.root() as root:
                wait_until(lambda: any(s["state"] == "active" for s in root.get("/schedulers").json()), 60,
                           "the scheduler joining the manager")
        self.seed = self._daemon(self.seed_host, self.workdir / "seed", seed=True)
        for node in self.nodes:
            self.log(f"starting containerd and damselfly on {node.host.name} ({node.host.address})")
            node.containerd = self._containerd(node)
            node.daemon = self._daemon(node.host, node.workdir / "damselfly")

    def _start_manager(self) -> None:
        """Redis and a manager in the root namespace, on the bridge's address: the scheduler (on
        the seed host) reaches both over its link, the harness and the manager reach the
        registry over the bridge. The manager's certificate names that address, for the
        harness's HTTPS client; members check its role, as deployed."""
        gateway = self.network.gateway
        self.log(f"starting Redis and the manager on {gateway}")
        self.redis = RedisServer(host=gateway)  # close() stops it, however far start() got
        self.redis.start()
        tls = self.workdir / "manager-tls"
        issue(ca_dir(), "bench-manager", ("manager",), tls, ips=(gateway,))
        registry = f"{self.registry_host.address}:{REGISTRY_PORT}"
        self.manager = Manager(self.workdir / "manager", listen_host=gateway, tls_dir=tls,
                               args=["--redis", self.redis.url, "--registry", f"{registry}=http://{registry}"])
        self.manager.start()

    def _daemon(self, host: Host, workdir: Path, seed: bool = False) -> Damselfly:
        assert self.scheduler is not None
        mapping = [f"{a}:{REGISTRY_PORT}=http://{a}:{REGISTRY_PORT}" for a in (self.registry_host.address,)]
        return start_peer(workdir / "data", [self.scheduler.url], ["--registry", mapping[0]], seed=seed,
                          host=host.address, wrap=host.command())

    def _containerd(self, node: Node) -> Containerd:
        # containerd and runc stay in the root namespaces (runc needs the cgroup mounts that
        # ip netns exec hides); the pull runs in the node's network namespace.
        return Containerd(node.workdir / "ctd").start()

    def push(self, image: Image, nydus: bool) -> None:
        """The image, and (for the nydus scenarios) its nydus form under the tag ``nydus``."""
        push_image(RegistryClient(self.registry.url), image)
        if nydus:
            subprocess.run([sys.executable, "-m", "damselfly", "nydus", "convert", "--plain-http",
                            image.reference(self.registry.host), self._nydus_reference(image)], check=True,
                           capture_output=True)

    def _nydus_reference(self, image: Image) -> str:
        return f"{self.registry.host}/{image.name}:{NYDUS_TAG}"

    # -- resetting caches between scenarios ------------------------------------------

    def empty_containerd(self) -> None:
        for node in self.nodes:
            assert node.containerd is not None
            node.containerd.stop()
            shutil.rmtree(node.workdir / "ctd", ignore_errors=True)
            node.containerd = self._containerd(node)

    def empty_daemons(self) -> None:
        """The seed and every node's daemon restarted on empty data directories: nothing of an
        earlier scenario is cached, and no download of one goes on into the next."""
        assert self.seed is not None
        self.seed.stop()
        shutil.rmtree(self.workdir / "seed", ignore_errors=True)
        self.seed = self._daemon(self.seed_host, self.workdir / "seed", seed=True)
        for node in self.nodes:
            assert node.daemon is not None
            node.daemon.stop()
            shutil.rmtree(node.workdir / "damselfly", ignore_errors=True)
            node.daemon = self._daemon(node.host, node.workdir / "damselfly")

    def await_members(self) -> None:
        """The scheduler knowing the seed and every node's daemon, and none that left: a
        preheat goes to the live hosts the scheduler knows."""
        scheduler = self.scheduler
        assert scheduler is not None
        wanted = len(self.nodes) + 1
        wait_until(lambda: scheduler.metric("damselfly_scheduler_hosts", 'kind="all"') == wanted, 60,
                   f"the scheduler knowing {wanted} hosts")

    def preheat(self, image: Image, root: httpx.Client) -> tuple[float, float | None]:
        """A preheat of the image to every peer, asked with ``root`` (the manager's API, signed
        in as root): (seconds from the POST until the job read SUCCESS, seconds until the
        registry's link had begun sending its blobs, if seen)."""
        registry_sent = link_sampler(self.registry_host.link, DOWNLOAD_SAMPLE)
        body = {"type": "preheat", "args": {"type": "image", "url": image.reference(self.registry.host),
                                            "scope": "all_peers", "timeout": PREHEAT_TIMEOUT}}
        with registry_sent:
            started = time.monotonic()
            answer = root.post("/jobs", json=body)
            if answer.status_code != 201:
                raise RuntimeError(f"POST /jobs: {answer.status_code} {answer.text.strip()}")
            job = answer.json()
            while job["state"] not in ("SUCCESS", "FAILURE", "CANCELLED"):
                if time.monotonic() - started > PREHEAT_TIMEOUT + 60:
                    raise RuntimeError(f"preheat job {job['id']} still {job['state']} after {PREHEAT_TIMEOUT + 60}s")
                time.sleep(PREHEAT_POLL)
                job = root.get(f"/jobs/{job['id']}").json()
            seconds = time.monotonic() - started
        if job["state"] != "SUCCESS":
            raise RuntimeError(f"preheat job {job['id']} ended {job['state']}: {job.get('error')}")
        return seconds, _reached(registry_sent.samples, FIRST_BLOB_BYTES)

    def _fill(self, daemons: list[Damselfly], image: Image, nydus: bool) -> None:
        """Every blob of the image (or of its nydus form), its config included, fetched whole
        through each daemon, all at once: what the remote and local scenarios start from,
        whatever ran before (a lazy start leaves a node's daemon with part of a blob)."""
        registry = PullClient(self.registry.host, plain_http=True)
        try:
            manifest, _, _ = registry.manifest(image.name, NYDUS_TAG if nydus else image.tag)
        finally:
            registry.close()

        def fill(daemon: Damselfly) -> None:
            client = PullClient(self.registry.host, mirror=daemon.url)
            try:
                for blob in [manifest["config"], *manifest["layers"]]:  # the config too: a pull fetches it
                    with client.open_blob(image.name, blob["digest"]) as response:
                        for _ in response.iter_bytes(1 << 20):
                            pass
            finally:
                client.close()

        with ThreadPoolExecutor(len(daemons)) as pool:
            list(pool.map(fill, daemons))

    # -- one scenario ----------------------------------------------------------------

    def _hosts_dir(self, node: Node, mirror: str) -> Path:
        hosts = node.workdir / "hosts"
        shutil.rmtree(hosts, ignore_errors=True)
        registry = f"{self.registry_host.address}:{REGISTRY_PORT}"
        subprocess.run([sys.executable, "-m", "damselfly", "containerd-config", "--mirror", mirror, "--dir", str(hosts),
                        "--registry", f"{registry}=http://{registry}"], check=True, capture_output=True)
        return hosts

    def empty_pull_through(self) -> None:
        """The pull-through cache restarted on empty storage: cold in every round."""
        self.proxy.stop()
        shutil.rmtree(self.proxy.workdir / "storage", ignore_errors=True)
        self.proxy.start()

    def empty_chunk_caches(self) -> None:
        for node in self.nodes:
            shutil.rmtree(node.workdir / "nydus-cache", ignore_errors=True)

    def _nydus(self, *args: str, node: Node, check: bool = True) -> subprocess.CompletedProcess:
        """``damselfly nydus ARGS`` on the node's network, its mount state kept under its workdir."""
        return subprocess.run(node.host.network_only(sys.executable, "-m", "damselfly", "nydus", *args),
                              capture_output=True, text=True, timeout=600, env=self._nydus_env(node), check=check)

    @staticmethod
    def _nydus_env(node: Node) -> dict[str, str]:
        return {**os.environ, "DAMSELFLY_RUN_DIR": str(node.workdir / "run")}

    def _mount_service(self, node: Node) -> ServiceClient:
        """The node's mount service, started on first use (on the node's network)."""
        if node.mount_service is None or not node.mount_service.running():
            node.mount_service = MountServiceProcess(node.workdir / "nydus.sock", wrap=node.host.network_only(),
                                                     env=self._nydus_env(node)).start()
        return node.mount_service.client

    def _lazy_start(self, scenario: str, node: Node, image: Image, command: list[str]) -> tuple[float, int]:
        """Mount lazily, overlay, run the command: (seconds to the command's exit, blob bytes read)."""
        assert node.containerd is not None and node.daemon is not None
        mountpoint, rootfs = node.workdir / "nydus-mnt", node.workdir / "nydus-rootfs"
        upper, work = node.workdir / "nydus-upper", node.workdir / "nydus-work"
        for path in (upper, work):
            shutil.rmtree(path, ignore_errors=True)
        for path in (mountpoint, rootfs, upper, work):
            path.mkdir(parents=True, exist_ok=True)
        source = {"plain_http": True} if scenario == "nydus-cold" else {"mirror": node.daemon.url}
        service = self._mount_service(node)
        started = time.monotonic()
        service.mount(self._nydus_reference(image), mountpoint, node.workdir / "nydus-cache", **source)
        try:
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={mountpoint},upperdir={upper},workdir={work}", str(rootfs)], check=True,
                           capture_output=True)
            try:
                env = [arg for variable in json.loads(image.config)["config"].get("Env", [])
                       for arg in ("--env", variable)]  # ctr --rootfs knows no image config
                node.containerd.ctr("run", "--rm", *env, "--rootfs", str(rootfs), f"bench-{scenario}-{node.host.name}",
                                    *command, timeout=600)
                seconds = time.monotonic() - started
            finally:
                subprocess.run(["umount", str(rootfs)], capture_output=True)
        finally:
            try:
                stats = service.umount(mountpoint)
            except ServiceError:
                assert node.mount_service is not None
                if not node.mount_service.running():  # the command takes the mount down, for the next start
                    self._nydus("umount", str(mountpoint), node=node, check=False)
                raise
        return seconds, int(stats.get("fetched_bytes", 0))

    def run_scenario(self, scenario: str, image: Image, command: list[str]) -> ScenarioResult:
        self.log(f"scenario {scenario}: {len(self.nodes)} nodes")
        if scenario in ("p2p-cold", "p2p-remote", "nydus-p2p-cold", "nydus-p2p-remote", "preheat"):
            self.empty_daemons()  # cold whatever ran before, in any order
        if scenario == "preheat":
            self.await_members()
        if scenario in ("p2p-remote", "nydus-p2p-remote"):
            assert self.seed is not None
            self._fill([self.seed], image, scenario.startswith("nydus"))
        if scenario in ("p2p-local", "nydus-p2p-local", "nydus-cache"):  # no download left running either
            self._fill([node.daemon for node in self.nodes if node.daemon is not None], image,
                       scenario.startswith("nydus"))
        if scenario.startswith("nydus") and scenario != "nydus-cache":
            self.empty_chunk_caches()
        if scenario == "nydus-cache":
            # One untimed start fills each chunk cache with what the command reads (from the
            # node's daemon): after another nydus scenario it reads nothing new; run alone, it
            # is what makes the cache warm.
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda node: self._lazy_start(scenario, node, image, command), self.nodes))
        self.empty_containerd()
        if scenario == "local-registry":
            self._local_registries(image)
        if scenario == "pull-through":
            self.empty_pull_through()
        registry_host = self.proxy if scenario == "pull-through" else self.registry
        before = self.registry.access_log()
        sampler = link_sampler(self.registry_host.link)
        seed_sent = link_sampler(self.seed_host.link)
        # what reached each node over its link, for OCI pulls (a lazy start takes in a fraction of the image)
        arrivals = [] if scenario.startswith("nydus") else [
            link_sampler(node.host.link, DOWNLOAD_SAMPLE, received=True) for node in self.nodes]
        reference = image.reference(registry_host.host)
        fetched: list[int] = []

        def one(node: Node) -> float:
            assert node.containerd is not None and node.daemon is not None
            if scenario.startswith("nydus"):
                seconds, read = self._lazy_start(scenario, node, image, command)
                fetched.append(read)
                return seconds
            started = time.monotonic()
            pull = ["images", "pull", "--plain-http", reference]
            if scenario == "local-registry":
                assert node.registry is not None
                pull = ["images", "pull", "--plain-http", image.reference(node.registry.host)]
            if scenario.startswith("p2p") or scenario == "preheat":
                pull = ["images", "pull", "--hosts-dir", str(self._hosts_dir(node, node.daemon.url)), reference]
            node.containerd.ctr(*pull, timeout=1800, via=tuple(node.host.command()))
            # ctr fails on a non-zero exit. Its copy of a short-lived task's output is racy under load,
            # so success is the command's exit status, not what ctr relayed.
            node.containerd.ctr("run", "--rm", pull[-1], f"bench-{scenario}-{node.host.name}", *command, timeout=600)
            return time.monotonic() - started

        errors: list[str] = []
        seconds: list[float] = []
        preheated: list[float] = []
        dispatched: list[float] = []
        with contextlib.ExitStack() as samplers, ThreadPoolExecutor(len(self.nodes)) as pool:
            if scenario == "preheat":
                assert self.manager is not None, "the preheat scenario needs Cluster(preheat=True)"
                root = samplers.enter_context(self.manager.root())  # signed in before the samplers start
            for counter in (sampler, seed_sent, *arrivals):
                samplers.enter_context(counter)
            if scenario == "preheat":  # placed everywhere before any start's clock runs
                try:
                    took, began = self.preheat(image, root)
                    preheated.append(took)
                    dispatched.extend([began] if began is not None else [])
                    self.log(f"  preheat: SUCCESS in {took:.2f}s (registry sending blobs after "
                             f"{'?' if began is None else f'{began:.2f}'}s)")
                except Exception as exc:  # noqa: BLE001 - reported in the results, the run goes on
                    errors.append(f"preheat: {exc}")
                    self.log(f"  preheat: FAILED {exc}")
            futures = {pool.submit(one, n): n for n in self.nodes} if not errors else {}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=PROGRESS_INTERVAL, return_when=FIRST_COMPLETED)
                for future in finished:
                    node = futures[future]
                    try:
                        seconds.append(future.result())
                        self.log(f"  {scenario} {node.host.name}: started in {seconds[-1]:.2f}s")
                    except Exception as exc:  # noqa: BLE001 - reported in the results, the run goes on
                        errors.append(f"{node.host.name}: {exc}")
                        self.log(f"  {scenario} {node.host.name}: FAILED {exc}")
                if pending and not finished:
                    sent = sampler.samples[-1][1] if sampler.samples else 0
                    self.log(f"  {scenario}: {len(self.nodes) - len(pending)}/{len(self.nodes)} nodes done, "
                             f"registry sent {sent / 1e6:.1f} MB so far")
        after = self.registry.access_log()[len(before):]
        blob_entries = [e for e in after if e.method == "GET" and "/blobs/" in e.path]
        image_bytes = sum(len(layer.data) for layer in image.layers)
        downloads = [_reached(a.samples, image_bytes) for a in arrivals]
        return ScenarioResult(scenario, image.name, image_bytes, len(self.nodes), seconds,
                              sum(e.bytes for e in blob_entries), len(after), not errors, errors, sampler.samples,
                              fetched_bytes=fetched,
                              download_seconds=[] if None in downloads else downloads,
                              seed_bytes=seed_sent.peak, preheat_seconds=preheated,
                              preheat_dispatch_seconds=dispatched)

    def _local_registries(self, image: Image) -> None:
        """A docker-registry on every node, holding the image (pushed before the clock starts)."""
        for node in self.nodes:
            if node.registry is None:
                node.registry = Registry(node.workdir / "registry", address=node.host.address, port=REGISTRY_PORT,
                                         wrap=node.host.command()).start()
                push_image(RegistryClient(node.registry.url), image)

    def close(self) -> None:
        for node in self.nodes:
            mountpoint = node.workdir / "nydus-mnt"
            subprocess.run(["umount", str(node.workdir / "nydus-rootfs")], capture_output=True)
            if os.path.ismount(mountpoint):
                self._nydus("umount", str(mountpoint), node=node, check=False)
        for node in self.nodes:
            for process in (node.mount_service, node.daemon, node.containerd, node.registry):
                if process is not None:
                    process.stop()
        for process in (self.seed, self.scheduler, self.manager, self.proxy, self.registry):
            if process is not None:
                process.stop()
        if self.redis is not None:
            self.redis.close()
        self.network.close()
