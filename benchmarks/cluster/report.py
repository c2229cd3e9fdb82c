"""Results of the cluster runs: the distribution-time bound, the table and the charts."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.cluster.harness import ScenarioResult, p95

_RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def rate_bytes_per_second(rate: str) -> float:
    """tc's ``240mbit`` -> bytes per second."""
    text = rate.strip().lower()
    for unit in sorted(_RATE_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * _RATE_UNITS[unit] / 8
    raise ValueError(f"rate {rate!r}: want a number with kbit, mbit or gbit")


def distribution_bound(size: int, nodes: int, seed_upload: float, node_upload: float, node_download: float) -> float:
    """Kumar & Ross: T >= max(F/u_s, F/d_min, N*F/(u_s + sum u_i)) for F bytes to N peers."""
    return max(size / seed_upload, size / node_download, nodes * size / (seed_upload + nodes * node_upload))


def markdown(results: list[ScenarioResult]) -> str:
    rounds = max((r.rounds for r in results), default=1)
    caption = [f"Each row pools {rounds} rounds: p50, p95 and max over every start; the other columns "
               "are the rounds' (low) median.", ""] if rounds > 1 else []
    lines = [*caption, "| scenario | image | nodes | p50 s | p95 s | max s | registry MB | registry requests | "
             "lazy read MB/node | download p95 s | seed sent MB | bound ratio | ok |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        ratio = f"{r.bound_ratio:.2f}" if r.bound_ratio else ""
        lazy = f"{sum(r.fetched_bytes) / len(r.fetched_bytes) / 1e6:.1f}" if r.fetched_bytes else ""
        download = f"{p95(r.download_seconds):.2f}" if r.download_seconds else ""
        seed = f"{r.seed_bytes / 1e6:.1f}" if r.scenario.startswith(("p2p", "nydus-p2p", "preheat")) else ""
        lines.append(f"| {r.scenario} | {r.image} | {r.nodes} | {r.p50:.2f} | {r.p95:.2f} | "
                     f"{max(r.start_seconds, default=float('nan')):.2f} | {r.registry_bytes / 1e6:.1f} | "
                     f"{r.registry_requests} | {lazy} | {download} | {seed} | {ratio} | {'yes' if r.ok else 'NO'} |")
    return "\n".join(lines + preheat_table(results)) + "\n"


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else ""


def preheat_table(results: list[ScenarioResult]) -> list[str]:
    """The preheat rows against the bound, and their starts against p2p-local's (empty
    without a preheat). Its row above counts the preheat's registry and seed traffic with
    its starts, and its download p95 from the POST."""
    rows = [r for r in results if r.scenario == "preheat" and r.preheat_seconds]
    if not rows:
        return []
    lines = ["", "Preheat (scope all_peers): seconds from the POST to SUCCESS, against the bandwidth bound for "
             "distributing the image to the seed and every node; \"blobs begin\" is when the registry's link "
             "had begun sending them (the manager's and the scheduler's dispatch), \"download p95\" when a node "
             "had taken in the image, both from the POST. Starts then run from what the preheat placed, "
             "against `p2p-local` (blobs fetched whole into each daemon beforehand).", "",
             "| image | nodes | image MB | preheat p50 s | preheat max s | blobs begin p50 s | download p95 s | "
             "bound s | preheat p50 / bound | start p50 s | p2p-local p50 s | start / p2p-local |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        local = next((o for o in results if o.scenario == "p2p-local" and o.nodes == r.nodes and o.image == r.image
                      and o.start_seconds), None)
        bound = f"{r.bound_seconds:.2f}" if r.bound_seconds else ""
        ratio = f"{statistics.median(r.preheat_seconds) / r.bound_seconds:.2f}" if r.bound_seconds else ""
        download = f"{p95(r.download_seconds):.2f}" if r.download_seconds else ""
        versus = f"{r.p50 / local.p50:.2f}" if local is not None and r.start_seconds else ""
        lines.append(f"| {r.image} | {r.nodes} | {r.image_bytes / 1e6:.1f} | {_median(r.preheat_seconds)} | "
                     f"{max(r.preheat_seconds):.2f} | {_median(r.preheat_dispatch_seconds)} | {download} | {bound} | "
                     f"{ratio} | {_median(r.start_seconds)} | {f'{local.p50:.2f}' if local else ''} | {versus} |")
    return lines


def charts(results: list[ScenarioResult], out: Path) -> list[Path]:
    """Two PNGs in the style of the talk: start time per scenario and node count; registry traffic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r.scenario for r in results))
    counts = sorted({r.nodes for r in results})
    width = 0.8 / max(1, len(counts))
    paths = []
    for name, value, label in [("start-time.png", lambda r: r.p95, "p95 time to start the containers (s)"),
                               ("registry-traffic.png", lambda r: r.registry_bytes / 1e6, "bytes from the registry (MB)")]:
        figure, axes = plt.subplots(figsize=(max(8.0, 0.9 * len(scenarios)), 4.5), dpi=110)
        for i, count in enumerate(counts):
            values = [next((value(r) for r in results if r.scenario == s and r.nodes == count), 0) for s in scenarios]
            legend = f"{count} node" if count == 1 else f"{count} nodes"
            axes.bar([x + i * width for x in range(len(scenarios))], values, width, label=legend)
        axes.set_xticks([x + width * (len(counts) - 1) / 2 for x in range(len(scenarios))], scenarios,
                        rotation=30, ha="right")
        axes.set_ylabel(label)
        axes.legend()
        axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        path = out / name
        figure.savefig(path)
        plt.close(figure)
        paths.append(path)
    return paths
