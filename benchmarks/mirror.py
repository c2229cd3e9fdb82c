"""Mirror throughput and memory: a large blob through Damselfly versus straight from docker-registry.

In one run, with the same client (curl) for every path:
- direct: curl from docker-registry (its storage warm in the page cache), discarding the
  bytes, and again saving them to a new file, as the mirror must;
- cold:   curl through a Damselfly with an empty cache (pull-through);
- warm:   curl through Damselfly again (cache hit);
then the daemon's peak resident memory while it serves 4 concurrent streams of the
blob, cold and warm. Targets: warm >= 0.9x direct, cold >= 0.8x, memory < 150 MB.

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
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from benchmarks.sampling import Sampler
from damselfly.lib.units import format_size, parse_size
from tests.support.daemon import Damselfly
from tests.support.registry import Registry, RegistryClient
from tests.support.wait import wait_until

RESULTS = Path(__file__).parent / "results"
console = Console()


GiB = 1 << 30


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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def concurrent_peak_rss(node: Damselfly, url: str, streams: int) -> tuple[int, float]:
    """Peak daemon RSS while ``streams`` curls download ``url`` at once; and their wall time."""
    assert node.process is not None
    pid = node.process.pid
    with Sampler(lambda: rss_bytes(pid), interval=0.02) as sampler:
        started = time.monotonic()
        procs = [subprocess.Popen(["curl", "-sS", "--fail", "-o", "/dev/null", url]) for _ in range(streams)]
        codes = [p.wait(600) for p in procs]
        elapsed = time.monotonic() - started
    if any(codes):
        raise click.ClickException(f"a concurrent download failed: curl exit codes {codes}")
    return sampler.peak, elapsed


@click.command()
@click.option("--size", "sizes", default="1GiB", show_default=True,
              help="Blob sizes, comma-separated (e.g. 256MiB,1GiB).")
@click.option("--rounds", default=5, show_default=True, help="Rounds per size; the table reports medians.")
@click.option("--streams", default=4, show_default=True, help="Concurrent streams for the memory measurement.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def mirror(sizes: str, rounds: int, streams: int, out: Path) -> None:
    """Blob throughput through the mirror (cold, warm) vs docker-registry, and peak memory."""
    if not shutil.which("docker-registry") or not shutil.which("curl"):
        raise click.ClickException("needs docker-registry and curl (Debian packages docker-registry, curl)")
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
    console.print(table)


def measure_size(work: Path, registry: Registry, size: int, rounds: int, streams: int) -> dict:
    blob_path = work / f"blob-{size}"
    write_random_file(blob_path, size)
    console.print(f"pushing {format_size(size)} to docker-registry")
    digest = RegistryClient(registry.url).push_blob("bench/blob", blob_path)
    blob_path.unlink()
    direct_url = f"{registry.url}/v2/bench/blob/blobs/{digest}"
    params = f"?ns={registry.host}"
    curl(direct_url)  # the registry's storage into the page cache, as it is on a busy registry
    results: dict[str, list[Transfer]] = {"direct": [], "disk_write": [], "direct_saved": [], "cold": [], "warm": []}
    cold_cpu: list[float] = []  # the daemon's CPU seconds per GiB of cold pull
    direct_cpu: list[float] = []  # the registry's and curl's CPU seconds per GiB of direct download
    assert registry.process is not None
    mapping = ["--registry", f"{registry.host}={registry.url}", "--cache-quota", "100GiB"]
    for round_index in range(rounds):
        console.print(f"[bold]{format_size(size)}[/] round {round_index + 1}/{rounds}")
        data_dir = work / "mirror-data"
        shutil.rmtree(data_dir, ignore_errors=True)
        node = Damselfly(data_dir, mapping).start()
        try:
            mirror_url = f"{node.url}/v2/bench/blob/blobs/{digest}"
            registry_cpu = cpu_seconds(registry.process.pid)
            results["direct"].append(curl(direct_url))
            direct_cpu.append((cpu_seconds(registry.process.pid) - registry_cpu
                               + results["direct"][-1].client_cpu_seconds) * GiB / size)
            results["disk_write"].append(fresh_file_write(work / "write-probe", size))
            results["direct_saved"].append(curl(direct_url, save_to=work / "curl-saved"))
            discard(work / "curl-saved")
            assert node.process is not None
            cpu_before = cpu_seconds(node.process.pid)
            results["cold"].append(curl(mirror_url, params))
            wait_until(lambda: node.metric("damselfly_store_blobs") == 1, 120, "the cold download to be stored")
            cold_cpu.append((cpu_seconds(node.process.pid) - cpu_before) * GiB / size)
            os.sync()  # untimed: a cache hit is measured as direct is, with no writeback of the last pull beside it
            results["warm"].append(curl(mirror_url, params))
        finally:
            node.stop()
    for name, transfers in results.items():
        bad = [t for t in transfers if t.bytes != size]
        if bad:
            raise click.ClickException(f"{name}: a transfer returned {bad[0].bytes} of {size} bytes")

    console.print(f"peak memory with {streams} concurrent streams")
    data_dir = work / "mirror-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    node = Damselfly(data_dir, mapping).start()
    try:
        assert node.process is not None
        idle_rss = rss_bytes(node.process.pid)
        mirror_url = f"{node.url}/v2/bench/blob/blobs/{digest}{params}"
        cold_peak, cold_wall = concurrent_peak_rss(node, mirror_url, streams)
        warm_peak, warm_wall = concurrent_peak_rss(node, mirror_url, streams)
        upstream_gets = len(registry.blob_gets(digest))
    finally:
        node.stop()
    shutil.rmtree(data_dir, ignore_errors=True)

    def median_speed(name: str) -> float:
        return statistics.median(t.mb_per_s for t in results[name])

    direct = median_speed("direct")
    hash_cpu = sha256_seconds_per_gib()
    ceiling = ceiling_mb_s(statistics.median(direct_cpu) + hash_cpu)
    return {
        "size_bytes": size,
        "rounds": rounds,
        "direct_mb_s": round(direct, 1),
        "disk_write_mb_s": round(median_speed("disk_write"), 1),
        "direct_saved_mb_s": round(median_speed("direct_saved"), 1),
        "cold_mb_s": round(median_speed("cold"), 1),
        "warm_mb_s": round(median_speed("warm"), 1),
        "cold_ratio": round(median_speed("cold") / direct, 3),
        "cold_saved_ratio": round(median_speed("cold") / median_speed("direct_saved"), 3),
        "cold_cpu_seconds_per_gib": round(statistics.median(cold_cpu), 2),
        "direct_cpu_seconds_per_gib": round(statistics.median(direct_cpu), 2),
        "sha256_cpu_seconds_per_gib": round(hash_cpu, 2),
        "cores": CORES,
        "cold_ceiling_mb_s": round(ceiling, 1),
        "cold_ceiling_ratio": round(ceiling / direct, 3),
        "warm_ratio": round(median_speed("warm") / direct, 3),
        "idle_rss_mb": round(idle_rss / 1e6, 1),
        "peak_rss_mb_cold": round(cold_peak / 1e6, 1),
        "peak_rss_mb_warm": round(warm_peak / 1e6, 1),
        "concurrent_cold_aggregate_mb_s": round(streams * size / cold_wall / 1e6, 1),
        "concurrent_warm_aggregate_mb_s": round(streams * size / warm_wall / 1e6, 1),
        "registry_blob_gets": upstream_gets,
        "transfers": {name: [asdict(t) for t in ts] for name, ts in results.items()},
    }


def markdown_table(records: list[dict], rounds: int, streams: int) -> str:
    lines = [
        f"Blob through the mirror vs straight from docker-registry (curl, loopback, median of {rounds} rounds; "
        f"peak daemon RSS while serving {streams} concurrent streams).",
        "",
        "| blob | direct MB/s | direct, saved to a file | new-file write MB/s | cold MB/s (ratio; vs saved) "
        "| cold ceiling here (ratio) | daemon CPU s/GiB cold | warm MB/s (ratio) | peak RSS cold / warm | idle RSS "
        "| registry GETs (all runs) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        lines.append(
            f"| {format_size(r['size_bytes'])} | {r['direct_mb_s']:.0f} | {r['direct_saved_mb_s']:.0f} | "
            f"{r['disk_write_mb_s']:.0f} | {r['cold_mb_s']:.0f} ({r['cold_ratio']:.2f}x; {r['cold_saved_ratio']:.2f}x) | "
            f"{r['cold_ceiling_mb_s']:.0f} ({r['cold_ceiling_ratio']:.2f}x) | {r['cold_cpu_seconds_per_gib']:.2f} | "
            f"{r['warm_mb_s']:.0f} ({r['warm_ratio']:.2f}x) | {r['peak_rss_mb_cold']:.0f} / {r['peak_rss_mb_warm']:.0f} MB | "
            f"{r['idle_rss_mb']:.0f} MB | {r['registry_blob_gets']} |")
    lines += ["", "Targets: cold >= 0.8x, warm >= 0.9x direct; peak RSS < 150 MB whatever the blob size.",
              "A cold pull must write the blob to a new file: the new-file write column is this machine's floor "
              "for it, measured in the same rounds. The targets compare with direct (curl discarding the bytes); "
              "'vs saved' compares with curl saving them to a new file, as the mirror does.",
              "The cold ceiling: no pull-through can beat it on this machine. It must make docker-registry send and "
              "curl receive the blob, as direct does, and compute its SHA-256; those CPU seconds per GiB "
              + ", ".join(f"({r['direct_cpu_seconds_per_gib']:.2f} + {r['sha256_cpu_seconds_per_gib']:.2f} for "
                          f"{format_size(r['size_bytes'])})" for r in records)
              + f", spread over {records[0]['cores']} cores, bound its speed. Everything else the mirror does "
              "(receive, write, send again) only lowers it.", ""]
    return "\n".join(lines)
