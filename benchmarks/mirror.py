"""Mirror throughput and memory: a large blob through Damselfly and through the programs a
user would install instead, versus straight from docker-registry.

In one run, with the same client (curl) for every path and the origin docker-registry's
storage warm in the page cache:
- direct: curl from the origin, discarding the bytes, and again saving them to a new
  file, as a mirror must;
- each contender from an empty cache: a cold pull (pull-through), then a warm one (cache
  hit). The contenders: Damselfly (``damselfly run``), docker-registry in proxy mode (a
  pull-through cache) and nginx with ``proxy_cache``. Each round gives every contender
  fresh storage, and the order of the contenders turns each round, so that none always
  runs first (or last) on a machine whose page cache the others have just filled;
then Damselfly's peak resident memory while it serves 4 concurrent streams of the blob,
cold and warm. Targets: Damselfly cold >= 1.0x docker-registry proxy cold; Damselfly
warm >= 1.0x the best peer's warm; peak RSS < 150 MB.

It also measures a ceiling for the cold path on this machine: a pull-through makes the
registry send and curl receive, as the direct download does, and must besides compute
the blob's SHA-256. That CPU time, spread over every core, bounds how fast any cold
pull can be here, whatever else the mirror does.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from benchmarks.prerequisites import MIRROR_PACKAGES, require_packages
from benchmarks.sampling import Sampler
from damselfly.lib.units import format_size, parse_size
from testkit.daemon import Damselfly
from testkit.processes import stop_process
from testkit.registry import Registry, RegistryClient
from testkit.wait import free_port, wait_until

RESULTS = Path(__file__).parent / "results"
console = Console()


GiB = 1 << 30
RSS_TARGET_MB = 150


@dataclass
class Transfer:
    path: str
    seconds: float
    bytes: int
    client_cpu_seconds: float = 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6


def curl(url: str, params: str = "", save_to: Path | None = None) -> Transfer:
    """One download with curl, its own timing. The body goes to /dev/null, or to a new file
    ``save_to`` as a client that keeps what it downloads would (the caller discards it)."""
    before = _children_cpu_seconds()
    out = subprocess.run(["curl", "-sS", "--fail", "-o", str(save_to or "/dev/null"), "-w",
                          "%{time_total} %{size_download}", url + params],
                         capture_output=True, text=True, check=True, timeout=600)
    seconds, size = out.stdout.split()
    return Transfer(url, float(seconds), int(size), _children_cpu_seconds() - before)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def body_sha256(url: str) -> str:
    """The SHA-256 of what ``url`` serves, as a digest (``sha256:...``)."""
    with subprocess.Popen(["curl", "-sS", "--fail", url], stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        digest = hashlib.file_digest(process.stdout, "sha256").hexdigest()
    if process.returncode:
        raise click.ClickException(f"curl {url} failed with exit code {process.returncode}")
    return f"sha256:{digest}"


CORES = len(os.sched_getaffinity(0))


def ceiling_mb_s(cpu_seconds_per_gib: float) -> float:
    """The fastest any transfer needing this much CPU per GiB can run, spread over every core."""
    return CORES * GiB / cpu_seconds_per_gib / 1e6


def sha256_seconds_per_gib(sample: int = 256 << 20) -> float:
    """CPU seconds one core needs to compute the SHA-256 of a GiB (best of three)."""
    data = os.urandom(sample)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        hashlib.sha256(data).digest()
        best = min(best, time.process_time() - started)
    return best * GiB / sample


def discard(path: Path) -> None:
    """Write ``path`` back to disk, untimed, so its writeback does not slow the next
    measurement; then delete it. Each measurement that writes a new file is made right
    after such a deletion (this machine fills pages it has just freed much faster)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()


def fresh_file_write(path: Path, size: int) -> Transfer:
    """How fast this machine puts a new file of ``size`` bytes into the page cache: the cold path's floor."""
    chunk = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    started = time.perf_counter()
    try:
        for offset in range(0, size, len(chunk)):
            os.pwrite(fd, chunk[: size - offset], offset)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    discard(path)
    return Transfer(str(path), seconds, size)


def write_random_file(path: Path, size: int) -> None:
    with Progress(TextColumn("generating blob"), BarColumn(), DownloadColumn(), console=console, transient=True) as bar:
        task = bar.add_task("gen", total=size)
        with open(path, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 16 << 20))
                f.write(chunk)
                left -= len(chunk)
                bar.advance(task, len(chunk))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants: nginx serves from worker processes."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue  # exited while we looked
    tree = {pid}
    while grown := {child for child, parent in parents.items() if parent in tree} - tree:
        tree |= grown
    return sum(cpu_seconds(member) for member in tree)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def concurrent_peak_rss(pid: int, url: str, streams: int) -> tuple[int, float]:
    """Peak RSS of process ``pid`` while ``streams`` curls download ``url`` at once; and their wall time."""
    with Sampler(lambda: rss_bytes(pid), interval=0.02) as sampler:
        started = time.monotonic()
        procs = [subprocess.Popen(["curl", "-sS", "--fail", "-o", "/dev/null", url]) for _ in range(streams)]
        codes = [p.wait(600) for p in procs]
        elapsed = time.monotonic() - started
    if any(codes):
        raise click.ClickException(f"a concurrent download failed: curl exit codes {codes}")
    return sampler.peak, elapsed


@dataclass(frozen=True)
class Blob:
    """The blob every contender pulls, and the docker-registry it comes from."""

    origin: Registry
    digest: str
    size: int

    @property
    def path(self) -> str:
        return f"/v2/bench/blob/blobs/{self.digest}"

    def origin_gets(self) -> int:
        return len(self.origin.blob_gets(self.digest))


@dataclass(frozen=True)
class Server:
    """A started contender: the URL of the blob through it, the process serving it,
    whether its cache holds the whole blob yet, and how to stop it."""

    blob_url: str
    pid: int
    stored: Callable[[], bool]
    stop: Callable[[], None]


def start_damselfly(work: Path, blob: Blob) -> Server:
    node = Damselfly(work / "data", ["--registry", f"{blob.origin.host}={blob.origin.url}", "--cache-quota", "100GiB"])
    node.start()
    assert node.process is not None
    return Server(f"{node.url}{blob.path}?ns={blob.origin.host}", node.process.pid,
                  lambda: node.metric("damselfly_store_blobs") == 1, node.stop)


def start_registry_proxy(work: Path, blob: Blob) -> Server:
    """docker-registry as a pull-through cache of the origin: what its documentation offers for a mirror."""
    proxy = Registry(work, extra_config={"proxy": {"remoteurl": blob.origin.url}}).start()
    assert proxy.process is not None
    hex_digest = blob.digest.removeprefix("sha256:")
    data = work / "storage/docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"
    return Server(f"{proxy.url}{blob.path}", proxy.process.pid,
                  lambda: data.exists() and data.stat().st_size == blob.size, proxy.stop)


# Its workers run as root: the scratch directory holding the cache is private to this (root) process.
NGINX_CONF = """\
user root;
worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {work}/access.log;
    client_body_temp_path {work}/temp/body;
    fastcgi_temp_path {work}/temp/fastcgi;
    scgi_temp_path {work}/temp/scgi;
    uwsgi_temp_path {work}/temp/uwsgi;
    proxy_temp_path {work}/temp/proxy;
    # A cacheable response always goes through a temp file into the cache, however large;
    # proxy_max_temp_file_size 0 (below) only stops nginx spooling the others to disk.
    proxy_cache_path {work}/cache levels=1:2 keys_zone=blobs:10m max_size=100g inactive=1d;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {origin};
            proxy_http_version 1.1;
            proxy_cache blobs;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10m;
            proxy_cache_lock_age 10m;
            proxy_cache_valid 200 1y;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def start_nginx(work: Path, blob: Blob) -> Server:
    """nginx with proxy_cache in front of the origin, as a caching reverse proxy is usually set up."""
    port = free_port()
    (work / "temp").mkdir(parents=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, origin=blob.origin.url))
    log = work / "error.log"
    process = subprocess.Popen(["nginx", "-p", str(work), "-e", str(log), "-c", str(conf), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(lambda: process.poll() is not None or listening(), 20, f"nginx on port {port}")
        if process.poll() is not None:
            raise click.ClickException(f"nginx exited: {log.read_text(errors='replace')[-2000:]}")
    except BaseException:
        stop_process(process)
        raise
    cache = work / "cache"  # nginx renames a response's temp file into it once complete
    return Server(f"http://127.0.0.1:{port}{blob.path}", process.pid,
                  lambda: any(f.stat().st_size > blob.size for f in cache.rglob("*") if f.is_file()),
                  lambda: stop_process(process))


@dataclass(frozen=True)
class Contender:
    name: str  # in mirror.json's peers and best_peer_* fields
    label: str  # its row in the table
    prefix: str  # of its fields in mirror.json and its transfers (Damselfly keeps the original, unprefixed ones)
    start: Callable[[Path, Blob], Server]


DAMSELFLY = Contender("damselfly", "Damselfly", "", start_damselfly)
REGISTRY_PROXY = Contender("registry_proxy", "docker-registry proxy", "registry_proxy_", start_registry_proxy)
NGINX = Contender("nginx", "nginx proxy_cache", "nginx_", start_nginx)
PEERS = (REGISTRY_PROXY, NGINX)
CONTENDERS = (DAMSELFLY, *PEERS)
BY_NAME = {contender.name: contender for contender in CONTENDERS}


@dataclass
class Pulls:
    """One contender's round: cold then warm, the CPU its processes spent on the cold pull,
    and how many GETs of the blob the origin served for it (none for the warm one)."""

    cold: Transfer
    warm: Transfer
    cold_cpu_seconds_per_gib: float
    origin_gets_cold: int


def pull_cold_and_warm(contender: Contender, work: Path, blob: Blob, verify: bool) -> Pulls:
    """Start ``contender`` on empty storage, pull the blob cold, wait until its cache holds
    it, pull it warm; with ``verify``, check the digest of what it then serves."""
    shutil.rmtree(work, ignore_errors=True)
    server = contender.start(work, blob)
    try:
        gets_before = blob.origin_gets()
        cpu_before = tree_cpu_seconds(server.pid)
        cold = curl(server.blob_url)
        wait_until(server.stored, 120, f"{contender.label} to store the cold pull")
        cpu = (tree_cpu_seconds(server.pid) - cpu_before) * GiB / blob.size
        gets_cold = blob.origin_gets() - gets_before
        os.sync()  # untimed: a cache hit is measured as direct is, with no writeback of the last pull beside it
        warm = curl(server.blob_url)
        gets_warm = blob.origin_gets() - gets_before - gets_cold
        if verify and (served := body_sha256(server.blob_url)) != blob.digest:
            raise click.ClickException(f"{contender.label} served {served}, not {blob.digest}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    if gets_warm:
        raise click.ClickException(f"{contender.label}: the warm pull reached the origin ({gets_warm} GETs)")
    return Pulls(cold, warm, cpu, gets_cold)


@click.command()
@click.option("--size", "sizes", default="256MiB,1GiB", show_default=True,
              help="Blob sizes, comma-separated (e.g. 256MiB,1GiB).")
@click.option("--rounds", default=5, show_default=True, help="Rounds per size; the table reports medians.")
@click.option("--streams", default=4, show_default=True, help="Concurrent streams for the memory measurement.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def mirror(sizes: str, rounds: int, streams: int, out: Path) -> None:
    """Blob throughput cold and warm through Damselfly, a docker-registry proxy and nginx vs direct; memory."""
    require_packages(*MIRROR_PACKAGES)
    records = []
    with tempfile.TemporaryDirectory(prefix="damselfly-bench-") as scratch:
        work = Path(scratch)
        registry = Registry(work / "registry").start()
        try:
            for size in (parse_size(s) for s in sizes.split(",")):
                records.append(measure_size(work, registry, size, rounds, streams))
        finally:
            registry.stop()
    out.mkdir(parents=True, exist_ok=True)
    (out / "mirror.json").write_text(json.dumps(records, indent=2) + "\n")
    table = markdown_table(records, rounds, streams)
    (out / "mirror.md").write_text(table)
    console.print(table, soft_wrap=True)


def measure_size(work: Path, registry: Registry, size: int, rounds: int, streams: int) -> dict:
    """Every measurement of one blob size, as a mirror.json record."""
    blob_path = work / f"blob-{size}"
    write_random_file(blob_path, size)
    console.print(f"pushing {format_size(size)} to docker-registry")
    blob = Blob(registry, RegistryClient(registry.url).push_blob("bench/blob", blob_path), size)
    blob_path.unlink()
    curl(f"{registry.url}{blob.path}")  # the registry's storage into the page cache, as it is on a busy registry
    results, pulls, direct_cpu = measure_rounds(work, blob, rounds)
    for contender, rounds_pulled in pulls.items():
        results[f"{contender.prefix}cold"] = [p.cold for p in rounds_pulled]
        results[f"{contender.prefix}warm"] = [p.warm for p in rounds_pulled]
    for name, transfers in results.items():
        bad = [t for t in transfers if t.bytes != size]
        if bad:
            raise click.ClickException(f"{name}: a transfer returned {bad[0].bytes} of {size} bytes")
    memory = damselfly_memory(work, blob, streams)

    def median_speed(name: str) -> float:
        return statistics.median(t.mb_per_s for t in results[name])

    direct = median_speed("direct")
    hash_cpu = sha256_seconds_per_gib()
    ceiling = ceiling_mb_s(statistics.median(direct_cpu) + hash_cpu)
    best_cold = max(PEERS, key=lambda peer: median_speed(f"{peer.prefix}cold"))
    best_warm = max(PEERS, key=lambda peer: median_speed(f"{peer.prefix}warm"))
    record: dict = {
        "size_bytes": size,
        "rounds": rounds,
        "direct_mb_s": round(direct, 1),
        "disk_write_mb_s": round(median_speed("disk_write"), 1),
        "direct_saved_mb_s": round(median_speed("direct_saved"), 1),
        "peers": [peer.name for peer in PEERS],
        "best_peer_cold": best_cold.name,
        "best_peer_warm": best_warm.name,
    }
    for contender in CONTENDERS:
        p = contender.prefix
        cold, warm = median_speed(f"{p}cold"), median_speed(f"{p}warm")
        record |= {
            f"{p}cold_mb_s": round(cold, 1),
            f"{p}warm_mb_s": round(warm, 1),
            f"{p}cold_ratio": round(cold / direct, 3),
            f"{p}warm_ratio": round(warm / direct, 3),
            f"{p}cold_saved_ratio": round(cold / median_speed("direct_saved"), 3),
            f"{p}cold_vs_best_peer": round(cold / median_speed(f"{best_cold.prefix}cold"), 3),
            f"{p}warm_vs_best_peer": round(warm / median_speed(f"{best_warm.prefix}warm"), 3),
            f"{p}cold_cpu_seconds_per_gib": round(statistics.median(r.cold_cpu_seconds_per_gib
                                                                    for r in pulls[contender]), 2),
            f"{p}origin_gets_per_cold_pull": max(r.origin_gets_cold for r in pulls[contender]),
        }
    record |= {
        "cold_vs_registry_proxy": round(median_speed("cold") / median_speed(f"{REGISTRY_PROXY.prefix}cold"), 3),
        "direct_cpu_seconds_per_gib": round(statistics.median(direct_cpu), 2),
        "sha256_cpu_seconds_per_gib": round(hash_cpu, 2),
        "cores": CORES,
        "cold_ceiling_mb_s": round(ceiling, 1),
        "cold_ceiling_ratio": round(ceiling / direct, 3),
        **memory,
        "registry_blob_gets": blob.origin_gets(),
    }
    record["targets_met"] = {
        "cold_vs_registry_proxy": record["cold_vs_registry_proxy"] >= 1.0,
        "warm_vs_best_peer": record["warm_vs_best_peer"] >= 1.0,
        "peak_rss": max(record["peak_rss_mb_cold"], record["peak_rss_mb_warm"]) < RSS_TARGET_MB,
    }
    record["transfers"] = {name: [asdict(t) for t in ts] for name, ts in results.items()}
    return record


def measure_rounds(work: Path, blob: Blob, rounds: int
                   ) -> tuple[dict[str, list[Transfer]], dict[Contender, list[Pulls]], list[float]]:
    """Each round: direct (discarding, then saving), a new-file write, then every contender
    cold and warm, starting with a different one each round. Also returns the registry's and
    curl's CPU seconds per GiB of each direct download."""
    registry = blob.origin
    assert registry.process is not None
    direct_url = f"{registry.url}{blob.path}"
    results: dict[str, list[Transfer]] = {"direct": [], "disk_write": [], "direct_saved": []}
    pulls: dict[Contender, list[Pulls]] = {contender: [] for contender in CONTENDERS}
    direct_cpu: list[float] = []
    for round_index in range(rounds):
        turn = round_index % len(CONTENDERS)
        order = CONTENDERS[turn:] + CONTENDERS[:turn]
        console.print(f"[bold]{format_size(blob.size)}[/] round {round_index + 1}/{rounds}: "
                      f"direct, then {', '.join(c.label for c in order)}")
        registry_cpu = cpu_seconds(registry.process.pid)
        results["direct"].append(curl(direct_url))
        direct_cpu.append((cpu_seconds(registry.process.pid) - registry_cpu
                           + results["direct"][-1].client_cpu_seconds) * GiB / blob.size)
        results["disk_write"].append(fresh_file_write(work / "write-probe", blob.size))
        results["direct_saved"].append(curl(direct_url, save_to=work / "curl-saved"))
        discard(work / "curl-saved")
        for contender in order:
            pulled = pull_cold_and_warm(contender, work / "contender", blob, verify=round_index == 0)
            pulls[contender].append(pulled)
            console.print(f"  {contender.label}: cold {pulled.cold.mb_per_s:.0f} MB/s, "
                          f"warm {pulled.warm.mb_per_s:.0f} MB/s (direct {results['direct'][-1].mb_per_s:.0f})")
    return results, pulls, direct_cpu


def damselfly_memory(work: Path, blob: Blob, streams: int) -> dict:
    """Damselfly's resident memory idle and at its peak while serving ``streams`` concurrent
    downloads, cold then warm, with their aggregate throughput."""
    console.print(f"Damselfly's peak memory with {streams} concurrent streams")
    node = start_damselfly(work / "contender", blob)
    try:
        idle_rss = rss_bytes(node.pid)
        cold_peak, cold_wall = concurrent_peak_rss(node.pid, node.blob_url, streams)
        warm_peak, warm_wall = concurrent_peak_rss(node.pid, node.blob_url, streams)
    finally:
        node.stop()
        shutil.rmtree(work / "contender", ignore_errors=True)
    return {
        "idle_rss_mb": round(idle_rss / 1e6, 1),
        "peak_rss_mb_cold": round(cold_peak / 1e6, 1),
        "peak_rss_mb_warm": round(warm_peak / 1e6, 1),
        "concurrent_cold_aggregate_mb_s": round(streams * blob.size / cold_wall / 1e6, 1),
        "concurrent_warm_aggregate_mb_s": round(streams * blob.size / warm_wall / 1e6, 1),
    }


def markdown_table(records: list[dict], rounds: int, streams: int) -> str:
    lines = [
        f"A blob pulled through each mirror vs straight from docker-registry (curl, loopback, median of {rounds} "
        "rounds; each round every contender starts with an empty cache, in a turning order). Cold: the first pull, "
        "through to the origin; warm: the second, from the cache. The best peer is the faster of docker-registry "
        "proxy and nginx; CPU is the contender's processes' during the cold pull.", ""]
    for r in records:
        lines += [f"### {format_size(r['size_bytes'])}", "",
                  "| | cold MB/s | cold vs direct | cold vs best peer | warm MB/s | warm vs direct | warm vs best peer "
                  "| CPU s/GiB, cold | origin GETs per cold pull |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for contender in CONTENDERS:
            p = contender.prefix
            name = f"**{contender.label}**" if contender is DAMSELFLY else contender.label
            lines.append(
                f"| {name} | {r[f'{p}cold_mb_s']:.0f} | {r[f'{p}cold_ratio']:.2f}x | {r[f'{p}cold_vs_best_peer']:.2f}x "
                f"| {r[f'{p}warm_mb_s']:.0f} | {r[f'{p}warm_ratio']:.2f}x | {r[f'{p}warm_vs_best_peer']:.2f}x "
                f"| {r[f'{p}cold_cpu_seconds_per_gib']:.2f} | {r[f'{p}origin_gets_per_cold_pull']} |")
        lines += [f"| direct (curl from docker-registry) | {r['direct_mb_s']:.0f} | 1.00x | | | | | | |", "",
                  f"This machine: curl saving to a new file {r['direct_saved_mb_s']:.0f} MB/s; writing a new file "
                  f"{r['disk_write_mb_s']:.0f} MB/s; cold ceiling {r['cold_ceiling_mb_s']:.0f} MB/s "
                  f"({r['cold_ceiling_ratio']:.2f}x direct). Damselfly serving {streams} concurrent streams: peak RSS "
                  f"{r['peak_rss_mb_cold']:.0f} MB cold / {r['peak_rss_mb_warm']:.0f} MB warm (idle "
                  f"{r['idle_rss_mb']:.0f} MB), {r['concurrent_cold_aggregate_mb_s']:.0f} / "
                  f"{r['concurrent_warm_aggregate_mb_s']:.0f} MB/s in all. Origin GETs of the blob, all runs: "
                  f"{r['registry_blob_gets']}.", ""]

    def verdict(met: bool) -> str:
        return "met" if met else "**missed**"

    sizes = [format_size(r["size_bytes"]) for r in records]
    lines += ["### Targets", "", f"| target | {' | '.join(sizes)} |", f"| --- |{' --- |' * len(records)}",
              "| Damselfly cold >= 1.0x docker-registry proxy cold | " + " | ".join(
                  f"{r['cold_vs_registry_proxy']:.2f}x, {verdict(r['targets_met']['cold_vs_registry_proxy'])}"
                  for r in records) + " |",
              "| Damselfly warm >= 1.0x the best peer's warm | " + " | ".join(
                  f"{r['warm_vs_best_peer']:.2f}x ({BY_NAME[r['best_peer_warm']].label}), "
                  f"{verdict(r['targets_met']['warm_vs_best_peer'])}" for r in records) + " |",
              f"| Damselfly peak RSS < {RSS_TARGET_MB} MB ({streams} streams) | " + " | ".join(
                  f"{max(r['peak_rss_mb_cold'], r['peak_rss_mb_warm']):.0f} MB, {verdict(r['targets_met']['peak_rss'])}"
                  for r in records) + " |", "",
              "A cold pull must write the blob to a new file: writing a new file is this machine's floor for it, "
              "measured in the same rounds, and curl saving to a new file is the direct download doing the same.",
              "The cold ceiling: no pull-through can beat it on this machine. It must make docker-registry send and "
              "curl receive the blob, as direct does, and compute its SHA-256; those CPU seconds per GiB "
              + ", ".join(f"({r['direct_cpu_seconds_per_gib']:.2f} + {r['sha256_cpu_seconds_per_gib']:.2f} for "
                          f"{format_size(r['size_bytes'])})" for r in records)
              + f", spread over {records[0]['cores']} cores, bound its speed. Everything else a mirror does "
              "(receive, write, send again) only lowers it.", ""]
    return "\n".join(lines)
