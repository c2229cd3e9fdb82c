"""Ranking candidate parents for a peer (pure).

A candidate's score mixes, with fixed weights: how many of the pieces the child lacks
it holds, how many of its upload slots are free, how its recent uploads went (success
ratio), whether it is a seed peer, and how close it is (same IDC, shared location
prefix). Candidates that cannot serve at all are filtered first: the child itself,
hosts without free slots, hosts the child already reported as bad, slow outliers, and
any host whose parent chain leads back to the child (no cycles).
"""

from __future__ import annotations

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
    for a, b in zip(mine, theirs):
        if a != b:
            break
        common += 1
    return common / max(len(mine), len(theirs))


def is_bad_node(candidate: Candidate, others: list[Candidate]) -> bool:
    """Slow outlier: its mean piece cost is SLOW_FACTOR times the median of the other parents'.

    Seed peers are exempt: their uplink is often capped on purpose, and they hold every piece.
    """
    if candidate.is_seed:
        return False
    cost = candidate.mean_cost
    peer_costs = [c.mean_cost for c in others if c.host_id != candidate.host_id and c.mean_cost is not None]
    if cost is None or not peer_costs:
        return False
    return cost > SLOW_FACTOR * statistics.median(peer_costs)


def score(child: Child, candidate: Candidate) -> float:
    held = 1.0 if candidate.seeding else candidate.pieces / candidate.total_pieces if candidate.total_pieces else 0.0
    slots = candidate.free_slots / candidate.upload_slots if candidate.upload_slots else 0.0
    tries = candidate.successes + candidate.failures
    success = candidate.successes / tries if tries else 0.5
    return (WEIGHT_PIECES * held + WEIGHT_FREE_SLOTS * slots + WEIGHT_SUCCESS * success
            + WEIGHT_SEED * (1.0 if candidate.is_seed else 0.0) + WEIGHT_AFFINITY * affinity(child, candidate))


def creates_cycle(child: str, candidate: str, parents_of: dict[str, set[str]]) -> bool:
    """True when ``candidate`` already downloads, directly or not, from ``child``."""
    seen: set[str] = set()
    stack = [candidate]
    while stack:
        node = stack.pop()
        if node == child:
            return True
        if node in seen:
            continue
        seen.add(node)
        stack.extend(parents_of.get(node, ()))
    return False


def rank_parents(child: Child, candidates: list[Candidate], parents_of: dict[str, set[str]],
                 limit: int = 4) -> list[Candidate]:
    """The best ``limit`` parents for ``child``, best first."""
    usable = [
        c for c in candidates
        if c.host_id != child.host_id
        and c.host_id not in child.bad_parents
        and (c.pieces > 0 or c.seeding)
        and c.free_slots > 0
        and not creates_cycle(child.host_id, c.host_id, parents_of)
    ]
    # A slow outlier is dropped only when someone else can serve: slow beats nothing.
    fast = [c for c in usable if not is_bad_node(c, candidates)]
    usable = fast or usable
    usable.sort(key=lambda c: (-score(child, c), c.host_id))
    return usable[:limit]
