"""Ranking candidate parents for a peer (pure).

A candidate's score mixes, with fixed weights: how many of the pieces the child lacks
it holds, how many of its upload slots are free, how its recent uploads went (success
ratio), whether it is a seed peer, and how close it is (same IDC, shared location
prefix). Candidates that cannot serve at all are filtered first: the child itself,
hosts without free slots, hosts the child already reported as bad, slow outliers, and
any host whose parent chain leads back to the child (no cycles). Every step is linear in
the candidates (but one sort): the scheduler ranks on every poll of every peer.
"""

from __future__ import annotations

import bisect
import heapq
import statistics
from dataclasses import dataclass, field

# Weights of the score; they sum to 1.
WEIGHT_PIECES = 0.35
WEIGHT_FREE_SLOTS = 0.2
WEIGHT_SUCCESS = 0.2
WEIGHT_SEED = 0.1
WEIGHT_AFFINITY = 0.15
# A parent whose mean piece cost is this many times the median of the others is a bad node.
SLOW_FACTOR = 5.0
MIN_COST_SAMPLES = 3


@dataclass
class Candidate:
    host_id: str
    pieces: int  # pieces it holds that the child lacks
    total_pieces: int
    upload_slots: int
    uploads_in_flight: int
    is_seed: bool = False
    seeding: bool = False  # a seed still downloading: it will hold every piece
    idc: str = ""
    location: str = ""
    successes: int = 0
    failures: int = 0
    piece_costs: list[float] = field(default_factory=list)  # seconds per piece, recent

    @property
    def free_slots(self) -> int:
        return max(0, self.upload_slots - self.uploads_in_flight)

    @property
    def mean_cost(self) -> float | None:
        return statistics.fmean(self.piece_costs) if len(self.piece_costs) >= MIN_COST_SAMPLES else None


@dataclass
class Child:
    host_id: str
    idc: str = ""
    location: str = ""
    bad_parents: frozenset[str] = frozenset()


def affinity(child: Child, candidate: Candidate) -> float:
    """1 for the same IDC; otherwise the share of the location path (A|B|C) they have in common."""
    if child.idc and child.idc == candidate.idc:
        return 1.0
    mine, theirs = child.location.split("|") if child.location else [], candidate.location.split("|") if candidate.location else []
    if not mine or not theirs:
        return 0.0
    common = 0
    for a, b in zip(mine, theirs, strict=False):  # paths of different depths share a prefix
        if a != b:
            break
        common += 1
    return common / max(len(mine), len(theirs))


def slow_outliers(candidates: list[Candidate]) -> set[str]:
    """Slow outliers: a mean piece cost SLOW_FACTOR times the median of the other candidates'.

    One sort for all of them (the median without one element is read off the sorted
    list), so that ranking stays O(parents log parents). Seed peers are exempt: their
    uplink is often capped on purpose, and they hold every piece.
    """
    costs = sorted(cost for c in candidates if (cost := c.mean_cost) is not None)
    slow = set()
    for candidate in candidates:
        cost = candidate.mean_cost
        if candidate.is_seed or cost is None or len(costs) < 2:
            continue
        if cost > SLOW_FACTOR * _median_without(costs, bisect.bisect_left(costs, cost)):
            slow.add(candidate.host_id)
    return slow


def _median_without(ordered: list[float], k: int) -> float:
    """The median of ``ordered`` (sorted) without its element at ``k``."""
    def at(j: int) -> float:
        return ordered[j] if j < k else ordered[j + 1]

    m = len(ordered) - 1
    return at(m // 2) if m % 2 else (at(m // 2 - 1) + at(m // 2)) / 2


def score(child: Child, candidate: Candidate) -> float:
    held = 1.0 if candidate.seeding else candidate.pieces / candidate.total_pieces if candidate.total_pieces else 0.0
    slots = candidate.free_slots / candidate.upload_slots if candidate.upload_slots else 0.0
    tries = candidate.successes + candidate.failures
    success = candidate.successes / tries if tries else 0.5
    return (WEIGHT_PIECES * held + WEIGHT_FREE_SLOTS * slots + WEIGHT_SUCCESS * success
            + WEIGHT_SEED * (1.0 if candidate.is_seed else 0.0) + WEIGHT_AFFINITY * affinity(child, candidate))


def downstream(child: str, parents_of: dict[str, set[str]]) -> set[str]:
    """The hosts that download, directly or not, from ``child``: none may be its parent (no
    cycles). One walk over the reverse edges for all candidates."""
    children_of: dict[str, list[str]] = {}
    for node, parents in parents_of.items():
        for parent in parents:
            children_of.setdefault(parent, []).append(node)
    seen: set[str] = set()
    stack = [child]
    while stack:
        for node in children_of.get(stack.pop(), ()):
            if node not in seen:
                seen.add(node)
                stack.append(node)
    return seen


def rank_parents(child: Child, candidates: list[Candidate], parents_of: dict[str, set[str]],
                 limit: int = 4) -> list[Candidate]:
    """The best ``limit`` parents for ``child``, best first."""
    below = downstream(child.host_id, parents_of)
    usable = [
        c for c in candidates
        if c.host_id != child.host_id
        and c.host_id not in child.bad_parents
        and (c.pieces > 0 or c.seeding)
        and c.free_slots > 0
        and c.host_id not in below
    ]
    # A slow outlier is dropped only when someone else can serve: slow beats nothing.
    slow = slow_outliers(candidates)
    usable = [c for c in usable if c.host_id not in slow] or usable
    return heapq.nsmallest(limit, usable, key=lambda c: (-score(child, c), c.host_id))
