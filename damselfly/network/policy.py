"""Which pieces a peer asks for next, and of which parent: the choice rules of a download,
as functions of plain data (no sockets, no event loop, no task), so that each rule is
tested on its own. PieceDownload (swarm.py) takes a DownloadState before each request,
asks ``next_request`` and does the I/O.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Container, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from damselfly.core.pieces import PieceBitmap
from damselfly.core.wire import MAX_RUN_PIECES

RETRY_BUSY_PARENT = 0.2  # seconds before asking a busy parent again, doubling up to MAX_BUSY_WAIT
MAX_BUSY_WAIT = 1.0
SEED_REQUESTS = 1  # requests this peer makes of one seed at once, beyond those for pieces its readers wait for
RUN_BYTES = 16 * 1024 * 1024  # the most one request asks a parent for (a run of consecutive pieces)
SMALL_RUN_BYTES = 1024 * 1024  # ... where a long run would be in the way (see run_limit_for)


@dataclass
class Parent:
    """A parent as the scheduler gave it, with this peer's requests to it in flight and its
    busy answers (the download's workers count them on this one object)."""

    host_id: str
    url: str
    is_seed: bool
    seeding: bool
    bitmap: PieceBitmap
    in_flight: int = 0
    busy_answers: int = 0  # 503s in a row: the wait before asking again doubles with each

    def busy_wait(self) -> float:
        """Seconds to wait after another 503: 0.2, 0.4, 0.8, then 1 s. Dropping a busy parent
        instead would leave peers that all wait on one busy seed without a parent until they
        give up and go to the registry (seen in the harness)."""
        self.busy_answers += 1
        return min(RETRY_BUSY_PARENT * 2.0 ** (self.busy_answers - 1), MAX_BUSY_WAIT)

    def refused_wait(self) -> float | None:
        """Seconds before asking again after a "not here" (404), or None: drop the parent. A
        seed still fetching the blob has not reached the piece yet; anyone else will not
        have it."""
        return RETRY_BUSY_PARENT if self.seeding else None

    def can_give(self, index: int) -> bool:
        return self.bitmap.has(index) or self.seeding

    def may_send(self, index: int, digests: Container[int]) -> bool:
        """Whether to take piece ``index`` from this parent: it can give it and, from a peer,
        its digest is known (a seed sends its own; without one, nobody can check the piece)."""
        return self.can_give(index) and (self.is_seed or index in digests)


@dataclass(frozen=True)
class DownloadState:
    """What the choice of the next request looks at, read at once before each choice."""

    needed: Set[int]  # pieces neither here nor on their way
    waited_for: Mapping[int, int]  # each piece a reader waits for, to the last piece that reader reads up to
    rest_may_follow: bool  # pieces no reader waits for may be fetched now (Task.rest_may_follow)
    parents: Sequence[Parent]
    digests: Container[int]  # pieces whose digest is known
    swarm: int  # peers downloading the task at once, from the scheduler
    concurrency: int  # this peer's requests in flight at once, for all its parents
    piece_length: int
    ranged: bool  # the blob is read in ranges (nydus), not whole


@dataclass(frozen=True)
class Request:
    """A run of ``count`` pieces from ``index`` on, to ask ``parent`` for."""

    index: int
    count: int
    parent: Parent

    @property
    def run(self) -> range:
        return range(self.index, self.index + self.count)


def next_request(state: DownloadState, rng: random.Random) -> Request | None:
    """The next run of pieces and where to get it, or None: nothing to ask for now.

    A piece a reader waits for comes first, from a peer or else a seed (as soon as the
    reader starts waiting: the task tells the download), with the pieces up to the end
    of the reader's range. Then other peers: the rarest piece they hold, and the pieces
    after it that the same peer holds. Then a seed, which this peer asks at most
    SEED_REQUESTS times at once when other peers download the task too: a random
    piece from a window just ahead of the readers, so that peers take different pieces
    from the seed and trade them, while readers still get theirs soon. Alone with a
    seed, the peer just streams in order.
    """
    if not state.needed or not state.parents:
        return None
    missing = sorted(state.needed)
    peers = [p for p in state.parents if not p.is_seed]
    crowd = max(len(peers) + 1, state.swarm)
    # A peer's piece is only worth asking for once its digest is known (a seed sends its own).
    held = {i: [p for p in peers if p.bitmap.has(i)] if i in state.digests else [] for i in missing}
    for index in sorted(i for i in state.waited_for if i in held):
        givers = held[index] or [p for p in state.parents if p.is_seed and p.can_give(index)]
        if givers:
            parent = least_busy(givers, rng)
            reach = state.waited_for[index] - index + 1
            return _request(state, index, parent, min(reach, run_limit_for(state, parent, crowd, waited_for=True)))
    if not state.rest_may_follow:
        return None
    from_peers = [i for i in missing if held[i]]
    if from_peers:
        rng.shuffle(from_peers)
        index = min(from_peers, key=lambda i: len(held[i]))
        parent = least_busy(held[index], rng)
        return _request(state, index, parent, run_limit_for(state, parent, crowd))
    seed_slots = SEED_REQUESTS if crowd > 1 else state.concurrency
    seeds = [p for p in state.parents if p.is_seed and p.in_flight < seed_slots]
    if not seeds:
        return None
    start = min(state.waited_for, default=missing[0])
    window = [i for i in missing if i >= start][: 2 * crowd] or missing
    index = rng.choice(window) if crowd > 1 else window[0]
    givers = [p for p in seeds if p.can_give(index)]
    if not givers:
        return None
    parent = least_busy(givers, rng)
    return _request(state, index, parent, run_limit_for(state, parent, crowd))


def _request(state: DownloadState, index: int, parent: Parent, limit: int) -> Request:
    """Piece ``index`` and those after it this node still needs and may take from ``parent``,
    up to ``limit`` pieces in all."""
    count = 1
    while count < limit and index + count in state.needed and parent.may_send(index + count, state.digests):
        count += 1
    return Request(index, count, parent)


def run_limit_for(state: DownloadState, parent: Parent, crowd: int, waited_for: bool = False) -> int:
    """The most pieces to ask ``parent`` for at once. Small runs where a long one would be
    in the way: from a seed others need too, and for a range-read blob's pieces that no
    reader waits for (its next read must not queue behind 16 MiB on the link)."""
    small = (parent.is_seed and crowd > 1) or (state.ranged and not waited_for)
    return run_limit(state.piece_length, small)


def run_limit(piece_length: int, small: bool) -> int:
    """Pieces of ``piece_length`` in one request: SMALL_RUN_BYTES or RUN_BYTES of them, at
    least one, and never more than a parent serves in one body (MAX_RUN_PIECES: asking
    for more is refused as a bad request, which would drop a good parent)."""
    return max(1, min((SMALL_RUN_BYTES if small else RUN_BYTES) // piece_length, MAX_RUN_PIECES))


def least_busy(parents: Collection[Parent], rng: random.Random) -> Parent:
    """One of the parents with the fewest requests in flight, at random among them."""
    least = min(p.in_flight for p in parents)
    return rng.choice([p for p in parents if p.in_flight == least])


def may_give(parent: Parent, lacking: Iterable[int], digests: Container[int], refusing: Container[str]) -> bool:
    """Whether ``parent`` can give a piece this node lacks: a seed that does not refuse, or a
    peer that holds one whose digest is known (without it, nobody can take that piece).
    A download with no such parent, and no piece for a while, goes to the registry."""
    if parent.host_id in refusing:
        return False
    return any(parent.may_send(i, digests) for i in lacking)
