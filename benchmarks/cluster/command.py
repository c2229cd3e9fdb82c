"""``python -m benchmarks run``: the cluster-in-a-box scenarios, results.json and a table."""

from __future__ import annotations

import compileall
import contextlib
import json
import shutil
import signal
import tempfile
from dataclasses import asdict
from pathlib import Path
from collections.abc import Callable, Iterator

import click
from rich.console import Console

import damselfly
from benchmarks.cluster.harness import SCENARIOS, Cluster, ScenarioResult, merge_rounds
from benchmarks.cluster.netns import NetnsError, require_root
from benchmarks.prerequisites import CLUSTER_PACKAGES, require_packages
from benchmarks.cluster.report import charts, distribution_bound, markdown, rate_bytes_per_second
from damselfly.lib.units import format_size
from benchmarks.cluster.images import CACHE, large_image, nginx_image, python_image
from damselfly.cli import SIZE
from testkit.images import Image, build_image

console = Console()
RESULTS = Path(__file__).parent.parent / "results" / "cluster"
MiB = 1024 * 1024
IMAGES: dict[str, Callable[[int], Image]] = {
    "small": lambda _: build_image("bench/small", [2 * MiB, 8 * MiB, 4 * MiB]),
    "python": lambda _: python_image(CACHE),
    "nginx": lambda _: nginx_image(CACHE),
    "large": lambda size: large_image(CACHE, size),
}


def _compile_damselfly() -> None:
    """Byte-compile Damselfly's modules, as pip does when it installs a package. Every node
    starts a mount and an umount per lazy start; from a checkout with PYTHONDONTWRITEBYTECODE
    set (or not writable) each would compile the modules again, about 30 ms of CPU apiece.
    Reading the compiled files is allowed either way."""
    compileall.compile_dir(Path(damselfly.__file__).parent, quiet=1)


@click.command("run")
@click.option("--nodes", default="1,4,8", show_default=True, help="Node counts, comma-separated.")
@click.option("--image", type=click.Choice(sorted(IMAGES)), default="small", show_default=True)
@click.option("--large-size", type=SIZE, default="3GiB", show_default=True, help="Data in the large image's layers.")
@click.option("--scenarios", default="all", show_default=True, help=f"Comma-separated from: {', '.join(SCENARIOS)}.")
@click.option("--registry-rate", default="400mbit", show_default=True, help="Shaped rate of the registry's link.")
@click.option("--node-rate", default="240mbit", show_default=True, help="Shaped rate of each node's link.")
@click.option("--delay", default=None, help="Added one-way delay per link (tc netem), e.g. 2ms.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
@click.option("--quick", is_flag=True, help="3 nodes, the small image, every scenario.")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Times each scenario runs on a node count (in turn, each time after all the others); "
                   "the table pools the starts of every round.")
@click.option("--keep-logs", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy the logs of every daemon, scheduler and registry here before the cluster goes.")
def run(nodes: str, image: str, large_size: int, scenarios: str, registry_rate: str, node_rate: str,
        delay: str | None, out: Path, quick: bool, rounds: int, keep_logs: Path | None) -> None:
    """Start containers on a cluster of namespaces, through each scenario; write results.json."""
    try:
        require_root()
    except NetnsError as exc:
        raise click.ClickException(str(exc)) from None
    require_packages(*CLUSTER_PACKAGES)
    counts = [3] if quick else [int(n) for n in nodes.split(",")]
    chosen = SCENARIOS if scenarios == "all" or quick else [s.strip() for s in scenarios.split(",")]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        raise click.BadParameter(f"unknown scenarios {sorted(unknown)}", param_hint="--scenarios")
    signal.signal(signal.SIGTERM, _interrupt)  # a kill cleans up like Ctrl-C
    _compile_damselfly()
    console.print(f"building the {image} image (cached in {CACHE})")
    built = IMAGES[image](large_size)
    command = json.loads(built.config)["config"]["Cmd"]
    results: list[ScenarioResult] = []
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="dfly-") as scratch:
            try:
                cluster = Cluster(Path(scratch), count, registry_rate, node_rate, delay, log=console.print,
                                  preheat="preheat" in chosen)
            except NetnsError as exc:
                raise click.ClickException(f"cannot build the cluster network: {exc}") from None
            try:
                cluster.start()
                console.print(f"pushing {image} ({format_size(sum(len(layer.data) for layer in built.layers))})")
                cluster.push(built, nydus=any(s.startswith("nydus") for s in chosen))
                runs: dict[str, list[ScenarioResult]] = {scenario: [] for scenario in chosen}
                for round_index in range(rounds):
                    if rounds > 1:
                        console.print(f"round {round_index + 1}/{rounds}")
                    for scenario in chosen:
                        result = cluster.run_scenario(scenario, built, command)
                        node = rate_bytes_per_second(node_rate)
                        if scenario == "p2p-cold" and result.start_seconds:
                            result.bound_seconds = distribution_bound(result.image_bytes, count, node, node, node)
                            # distribution time: until the last node had the image (its unpack and run are not distribution)
                            distributed = max(result.download_seconds or result.start_seconds)
                            result.bound_ratio = distributed / result.bound_seconds
                        if scenario == "preheat" and result.preheat_seconds:
                            # the same bound: the seed and every node hold the image when the job succeeds
                            result.bound_seconds = distribution_bound(result.image_bytes, count, node, node, node)
                            result.bound_ratio = result.preheat_seconds[0] / result.bound_seconds
                        runs[scenario].append(result)
                results.extend(merge_rounds(runs[scenario]) for scenario in chosen)
            finally:
                if keep_logs is not None:
                    _copy_logs(Path(scratch), keep_logs / f"{count}-nodes")
                console.print("removing the cluster")
                with _uninterrupted():  # a second Ctrl-C (or a kill) must not leave half a cluster behind
                    cluster.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    table = markdown(results)
    (out / "results.md").write_text(table)
    console.print(table, soft_wrap=True)
    for path in charts(results, out):
        console.print(f"wrote {path}")
    if not all(r.ok for r in results):
        raise click.ClickException("some scenarios failed: " + "; ".join(e for r in results for e in r.errors))


def _copy_logs(scratch: Path, target: Path) -> None:
    """The cluster's *.log files, at the same relative paths (a node's daemon log is of its last scenario)."""
    for log in scratch.rglob("*.log"):
        destination = target / log.relative_to(scratch)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, destination)
    console.print(f"logs kept in {target}")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold off SIGINT and SIGTERM until the block ends, then act on one if it came."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _: received.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            raise KeyboardInterrupt
