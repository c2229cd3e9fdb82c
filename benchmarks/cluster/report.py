"""Results of the cluster runs: the distribution-time bound, the table and the charts."""

from __future__ import annotations

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
        seed = f"{r.seed_bytes / 1e6:.1f}" if r.scenario.startswith(("p2p", "nydus-p2p")) else ""
        lines.append(f"| {r.scenario} | {r.image} | {r.nodes} | {r.p50:.2f} | {r.p95:.2f} | "
                     f"{max(r.start_seconds, default=float('nan')):.2f} | {r.registry_bytes / 1e6:.1f} | "
                     f"{r.registry_requests} | {lazy} | {download} | {seed} | {ratio} | {'yes' if r.ok else 'NO'} |")
    return "\n".join(lines) + "\n"


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
