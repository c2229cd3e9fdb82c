"""The cluster benchmark's rounds: how one scenario's runs become one row."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.cluster.harness import ScenarioResult, merge_rounds
from benchmarks.cluster.report import markdown, preheat_table


def _round(starts: list[float], registry_bytes: int, seed_bytes: int, ratio: float | None = None,
           ok: bool = True) -> ScenarioResult:
    return ScenarioResult("p2p-cold", "bench/small", 14, len(starts), starts, registry_bytes, 4, ok,
                          [] if ok else ["n1: failed"], [(0.0, 0), (1.0, registry_bytes)], bound_ratio=ratio,
                          download_seconds=[s / 2 for s in starts], seed_bytes=seed_bytes)


def test_rounds_pool_their_starts_and_take_the_median_of_their_totals() -> None:
    merged = merge_rounds([_round([3.0, 5.0], 300, 30, 1.5), _round([1.0, 2.0], 100, 10, 1.1),
                           _round([4.0, 9.0], 200, 20, 2.0, ok=False)])
    assert merged.start_seconds == [3.0, 5.0, 1.0, 2.0, 4.0, 9.0]
    assert merged.p50 == 3.5 and merged.p95 == 9.0
    assert (merged.registry_bytes, merged.seed_bytes, merged.bound_ratio) == (200, 20, 1.5)
    assert merged.registry_timeline == [(0.0, 0), (1.0, 200)]  # the median round's
    assert merged.download_seconds == [1.5, 2.5, 0.5, 1.0, 2.0, 4.5]
    assert not merged.ok and merged.errors == ["n1: failed"]
    assert merged.rounds == 3
    assert markdown([merged]).startswith("Each row pools 3 rounds")


def test_two_rounds_take_the_lower_of_each_total() -> None:
    merged = merge_rounds([_round([1.0], 300, 10, 2.0), _round([2.0], 100, 30, 1.0)])
    assert (merged.registry_bytes, merged.seed_bytes, merged.bound_ratio) == (100, 10, 1.0)
    assert merged.registry_timeline == [(0.0, 0), (1.0, 100)]


def test_one_round_is_the_result_itself() -> None:
    single = _round([2.0], 100, 10)
    assert merge_rounds([single]) == single
    assert markdown([single]).startswith("| scenario")


def _preheat_round(starts: list[float], preheat: float, dispatch: float, ratio: float) -> ScenarioResult:
    return ScenarioResult("preheat", "bench/small", 14_000_000, len(starts), starts, 14_000_000, 6, True,
                          bound_seconds=0.5, bound_ratio=ratio, download_seconds=[preheat - 0.5] * len(starts),
                          preheat_seconds=[preheat], preheat_dispatch_seconds=[dispatch])


def test_preheat_rounds_pool_their_preheat_times() -> None:
    merged = merge_rounds([_preheat_round([1.0, 2.0], 3.0, 1.0, 6.0), _preheat_round([1.5, 2.5], 2.0, 0.5, 4.0)])
    assert merged.preheat_seconds == [3.0, 2.0] and merged.preheat_dispatch_seconds == [1.0, 0.5]
    assert merged.bound_ratio == 4.0 and merged.bound_seconds == 0.5


def test_the_preheat_table_sets_the_preheat_against_the_bound_and_the_starts_against_p2p_local() -> None:
    preheat = merge_rounds([_preheat_round([1.0, 2.0], 3.0, 1.0, 6.0), _preheat_round([1.5, 2.5], 2.0, 0.5, 4.0)])
    local = replace(_round([1.0, 1.5, 2.0, 2.5], 0, 0), scenario="p2p-local", nodes=2,
                    download_seconds=[])
    rows = preheat_table([local, preheat])
    assert rows[-1] == ("| bench/small | 2 | 14.0 | 2.50 | 3.00 | 0.75 | 2.50 | 0.50 | 5.00 | 1.75 | 1.75 "
                        "| 1.00 |")
    assert "| preheat | bench/small | 2 | 1.75 |" in markdown([local, preheat])
    assert "| 4.00 | yes |" in markdown([preheat])  # the main table's bound ratio: the rounds' low median
    assert preheat_table([local]) == []  # no preheat, no extra table
    assert markdown([local]).count("| scenario") == 1
    other_count = replace(local, nodes=4)
    assert preheat_table([other_count, preheat])[-1].endswith("| 1.75 |  |  |")  # p2p-local of the same node count only
