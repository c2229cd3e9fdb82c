"""P2P benchmarks on loopback, each against a baseline in the same run.

1. transfer: one parent (a seed peer holding the blob) to one child, through the child's
   mirror, over plain HTTP and over the cluster's mutual TLS, versus curl fetching the
   same blob straight from docker-registry, discarding it and, as the child does, saving
   it to a new file.
   Target: at least 0.7x curl's throughput. Also what this design spends: the CPU
   seconds per GiB of the child, the parent and curl during the transfer, and the speed
   that sum allows when spread over every core.
2. stampede: N peers (default 8) fetch one cold blob at once through their mirrors,
   versus N curls fetching it straight from docker-registry at once (discarding it, and
   saving it). Reports the registry's bytes divided by the blob size (target at most
   1.05) and the wall times.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
from rich.console import Console

from benchmarks.mirror import (
    CORES,
    GiB,
    RESULTS,
    ceiling_mb_s,
    cpu_seconds,
    curl,
    discard,
    fresh_file_write,
    write_random_file,
)
from benchmarks.prerequisites import P2P_PACKAGES, require_packages
from damselfly.lib.units import format_size, parse_size
from testkit.cluster import SchedulerProcess, start_peer
from testkit.registry import Registry, RegistryClient

console = Console()


def _push(work: Path, registry: Registry, size: int, name: str) -> str:
    path = work / f"{name}.bin"
    write_random_file(path, size)
    digest = RegistryClient(registry.url).push_blob(f"bench/{name}", path)
    path.unlink()
    return digest


@click.command()
@click.option("--transfer-size", default="512MiB", show_default=True)
@click.option("--stampede-size", default="256MiB", show_default=True)
@click.option("--peers", default=8, show_default=True)
@click.option("--rounds", default=3, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def p2p(transfer_size: str, stampede_size: str, peers: int, rounds: int, out: Path) -> None:
    """Parent-to-child piece transfer vs curl, and an N-peer stampede vs N direct pulls."""
    require_packages(*P2P_PACKAGES)
    with tempfile.TemporaryDirectory(prefix="damselfly-bench-") as scratch:
        work = Path(scratch)
        registry = Registry(work / "registry").start()
        try:
            transfer = measure_transfer(work, registry, parse_size(transfer_size), rounds)
            stampede = measure_stampede(work, registry, parse_size(stampede_size), peers, rounds)
        finally:
            registry.stop()
    record = {"transfer": transfer, "stampede": stampede}
    out.mkdir(parents=True, exist_ok=True)
    (out / "p2p.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(record, rounds)
    (out / "p2p.md").write_text(table)
    console.print(table)


def measure_transfer(work: Path, registry: Registry, size: int, rounds: int) -> dict:
    """The piece transfer over plain HTTP (loopback deployments) and over the cluster's mutual
    TLS, alternating which goes first each round, beside curl straight from the registry."""
    digest = _push(work, registry, size, "transfer")
    direct_url = f"{registry.url}/v2/bench/transfer/blobs/{digest}"
    curl(direct_url)  # registry storage into the page cache
    direct, saved, disk_write = [], [], []
    speeds: dict[bool, list[float]] = {False: [], True: []}
    spent: dict[bool, dict[str, list[float]]] = {tls: {"child": [], "parent": [], "curl": []} for tls in (False, True)}
    for index in range(rounds):
        direct.append(curl(direct_url))
        disk_write.append(fresh_file_write(work / "write-probe", size))
        saved.append(curl(direct_url, save_to=work / "curl-saved"))
        discard(work / "curl-saved")
        for tls in ((False, True) if index % 2 == 0 else (True, False)):
            console.print(f"transfer {format_size(size)} round {index + 1}/{rounds}{' over TLS' if tls else ''}")
            speed, cpu = _one_transfer(work / f"transfer-{index}-{tls}", registry, digest, size, tls)
            speeds[tls].append(speed)
            for name, value in cpu.items():
                spent[tls][name].append(value)
    direct_speed = statistics.median(t.mb_per_s for t in direct)
    saved_speed = statistics.median(t.mb_per_s for t in saved)
    p2p_speed, tls_speed = statistics.median(speeds[False]), statistics.median(speeds[True])
    cpu_per_gib = {tls: {name: statistics.median(values) for name, values in spent[tls].items()} for tls in spent}
    cpu_bound = ceiling_mb_s(sum(cpu_per_gib[False].values()))
    return {"size_bytes": size, "direct_mb_s": round(direct_speed, 1), "p2p_mb_s": round(p2p_speed, 1),
            "ratio": round(p2p_speed / direct_speed, 3), "direct_saved_mb_s": round(saved_speed, 1),
            "saved_ratio": round(p2p_speed / saved_speed, 3),
            "disk_write_mb_s": round(statistics.median(t.mb_per_s for t in disk_write), 1),
            "cpu_seconds_per_gib": {name: round(value, 3) for name, value in cpu_per_gib[False].items()},
            "cpu_bound_mb_s": round(cpu_bound, 1), "cpu_bound_ratio": round(cpu_bound / direct_speed, 3),
            "tls_mb_s": round(tls_speed, 1), "tls_ratio": round(tls_speed / direct_speed, 3),
            "tls_cpu_seconds_per_gib": {name: round(value, 3) for name, value in cpu_per_gib[True].items()},
            "cores": CORES}


def _one_transfer(root: Path, registry: Registry, digest: str, size: int, tls: bool) -> tuple[float, dict[str, float]]:
    """One parent-to-child transfer through the child's mirror: MB/s and CPU seconds per GiB."""
    mapping = ["--registry", f"{registry.host}={registry.url}"]
    scheduler = SchedulerProcess(root / "scheduler", tls=tls).start()
    seed = start_peer(root / "seed/data", [scheduler.url], mapping, seed=True)
    child = start_peer(root / "child/data", [scheduler.url], mapping)
    try:
        curl(f"{seed.url}/v2/bench/transfer/blobs/{digest}", f"?ns={registry.host}")  # the parent holds it
        assert child.process is not None and seed.process is not None
        before = cpu_seconds(child.process.pid), cpu_seconds(seed.process.pid)
        transfer = curl(f"{child.url}/v2/bench/transfer/blobs/{digest}", f"?ns={registry.host}")
        cpu = {"child": (cpu_seconds(child.process.pid) - before[0]) * GiB / size,
               "parent": (cpu_seconds(seed.process.pid) - before[1]) * GiB / size,
               "curl": transfer.client_cpu_seconds * GiB / size}
        assert child.metric("damselfly_p2p_bytes_total", 'source="seed"') == size, "the child must use P2P"
        return transfer.mb_per_s, cpu
    finally:
        for process in (child, seed, scheduler):
            process.stop()
        shutil.rmtree(root, ignore_errors=True)


def measure_stampede(work: Path, registry: Registry, size: int, peers: int, rounds: int) -> dict:
    mapping = ["--registry", f"{registry.host}={registry.url}"]
    results = []
    for index in range(rounds):
        console.print(f"stampede of {peers} peers, {format_size(size)}, round {index + 1}/{rounds}")
        digest = _push(work, registry, size, f"stampede{index}")
        name = f"bench/stampede{index}"
        direct_url = f"{registry.url}/v2/{name}/blobs/{digest}"
        curl(direct_url)
        root = work / f"stampede-{index}"
        scheduler = SchedulerProcess(root / "scheduler", tls=True).start()  # as a cluster is deployed
        nodes = [start_peer(root / "seed/data", [scheduler.url], mapping, seed=True)]
        nodes += [start_peer(root / f"peer{i}/data", [scheduler.url], mapping) for i in range(peers)]
        saved_files = [work / f"curl-saved-{i}" for i in range(peers)]
        try:
            with ThreadPoolExecutor(peers) as pool:
                before = sum(e.bytes for e in registry.blob_gets(digest))
                started = time.monotonic()
                list(pool.map(lambda _, url=direct_url: curl(url), range(peers)))
                direct_seconds = time.monotonic() - started
                fresh_file_write(work / "write-probe", peers * size)  # as the peers will, follow a deletion
                started = time.monotonic()
                list(pool.map(lambda path, url=direct_url: curl(url, save_to=path), saved_files))
                saved_seconds = time.monotonic() - started
                for path in saved_files:
                    discard(path)
                registry_before = sum(e.bytes for e in registry.blob_gets(digest))
                started = time.monotonic()
                transfers = list(pool.map(
                    lambda node, blob=f"/v2/{name}/blobs/{digest}": curl(node.url + blob, f"?ns={registry.host}"),
                    nodes[1:]))
                p2p_seconds = time.monotonic() - started
            assert all(t.bytes == size for t in transfers)
            registry_bytes = sum(e.bytes for e in registry.blob_gets(digest)) - registry_before
            from_peers = sum(n.metric("damselfly_p2p_bytes_total", 'source="peer"') for n in nodes[1:])
        finally:
            for process in (*reversed(nodes), scheduler):
                process.stop()
            shutil.rmtree(root, ignore_errors=True)
        results.append({"direct_seconds": round(direct_seconds, 3), "direct_saved_seconds": round(saved_seconds, 3),
                        "p2p_seconds": round(p2p_seconds, 3),
                        "registry_bytes": registry_bytes, "registry_ratio": round(registry_bytes / size, 3),
                        "peer_share": round(from_peers / (peers * size), 3), "direct_registry_bytes_before": before})
    return {"size_bytes": size, "peers": peers, "rounds": results,
            "median_direct_seconds": statistics.median(r["direct_seconds"] for r in results),
            "median_direct_saved_seconds": statistics.median(r["direct_saved_seconds"] for r in results),
            "median_p2p_seconds": statistics.median(r["p2p_seconds"] for r in results),
            "max_registry_ratio": max(r["registry_ratio"] for r in results),
            "median_peer_share": statistics.median(r["peer_share"] for r in results)}


def markdown(record: dict, rounds: int) -> str:
    t, s = record["transfer"], record["stampede"]
    return "\n".join([
        f"P2P on loopback (median of {rounds} rounds).",
        "",
        "| benchmark | Damselfly | baseline | ratio | target |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| parent -> child, {format_size(t['size_bytes'])} | {t['p2p_mb_s']:.0f} MB/s | curl from docker-registry "
        f"{t['direct_mb_s']:.0f} MB/s | {t['ratio']:.2f}x | >= 0.7x |",
        f"| the same, against curl saving to a new file | | {t['direct_saved_mb_s']:.0f} MB/s | "
        f"{t['saved_ratio']:.2f}x | |",
        f"| parent -> child over the cluster's mutual TLS | {t['tls_mb_s']:.0f} MB/s | curl from docker-registry "
        f"{t['direct_mb_s']:.0f} MB/s | {t['tls_ratio']:.2f}x | |",
        f"| what this design's CPU use allows on {t['cores']} cores (see below) | {t['cpu_bound_mb_s']:.0f} MB/s | | "
        f"{t['cpu_bound_ratio']:.2f}x | |",
        f"| stampede of {s['peers']} peers, {format_size(s['size_bytes'])}: registry bytes / blob size | "
        f"{s['max_registry_ratio']:.3f} (worst round) | {s['peers']}.000 for {s['peers']} direct pulls | | <= 1.05 |",
        f"| stampede: time for all {s['peers']} | {s['median_p2p_seconds']:.2f} s | {s['peers']} concurrent curls "
        f"{s['median_direct_seconds']:.2f} s | {s['median_p2p_seconds'] / s['median_direct_seconds']:.2f}x | |",
        f"| the same, against curls saving to new files | | {s['median_direct_saved_seconds']:.2f} s | "
        f"{s['median_p2p_seconds'] / s['median_direct_saved_seconds']:.2f}x | |",
        f"| stampede: share of bytes from other peers (not the seed) | {s['median_peer_share']:.0%} | | | |",
        "",
        "Each peer stores what it receives, as curl saving to a file does; the targets compare with curl "
        f"discarding the bytes. In the same rounds, writing {format_size(t['size_bytes'])} to a new file ran at "
        f"{t['disk_write_mb_s']:.0f} MB/s on this machine. Every measurement that writes a new file starts right "
        "after a file of the same size was deleted (this machine fills just-freed pages much faster).",
        "",
        "CPU seconds per GiB during the transfer: "
        + ", ".join(f"{name} {value:.2f}" for name, value in t["cpu_seconds_per_gib"].items())
        + "; over TLS: " + ", ".join(f"{name} {value:.2f}" for name, value in t["tls_cpu_seconds_per_gib"].items())
        + f". Spread over {t['cores']} cores, the plain transfer's work cannot run faster than the line above says;"
        " the child's share is the kernel's copies (receiving, writing into new page-cache pages, sending"
        " to curl), BLAKE3 of each piece and the SHA-256 of the whole blob, which every node checks before it"
        " serves the blob as complete. The stampede runs over TLS, as a cluster is deployed.",
        "",
    ])
