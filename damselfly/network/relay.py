"""Which peer a seed sends an asker to, when it already sends the same piece to others.

Nodes that start one image at once read the same chunks at about the same moment (nydus
especially: each read waits for its piece). The scheduler hears of a peer's new piece a
report and a poll later, so every peer asks the seed, whose link then carries each piece
once per peer. The seed knows better: it sends a run of pieces straight to the first asker
of its first piece and points later askers at a peer that has it or is getting it, which
sends them the run as it lands: a small tree per piece, the seed's link carrying each
piece about once. The asker checks each piece against the digests the seed gives with the
pointer, and gets from the seed whatever the peer does not bring.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DIRECT = 1  # askers a seed serves itself for each piece: the rest come from peers
FANOUT = 3  # askers sent to one holder of a piece
REMEMBER_SECONDS = 30.0  # a holder older than this may have dropped the blob; the scheduler knows by then
MAX_PIECES = 4096  # pieces remembered at once (the oldest forgotten first)


@dataclass
class Holder:
    url: str
    since: float
    sent_to: int = 0


class RelayBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._pieces: OrderedDict[tuple[str, int], list[Holder]] = OrderedDict()

    def route(self, task: str, run: range, asker: str) -> str | None:
        """The upload URL to send ``asker`` to for the pieces ``run`` of ``task``, or None to serve them.

        Whoever holds the run's first piece decides. Either way the asker is remembered as a
        holder of every piece of the run, which later askers may be sent to whatever piece
        their own runs start at.
        """
        now = self.clock()
        holders = self._holders(task, run.start, now)
        target = None
        # One asking again (its relay failed, or it was busy) is served: others may wait on it.
        if len(holders) >= DIRECT and not any(h.url == asker for h in holders):
            free = [h for h in holders if h.sent_to < FANOUT]
            if free:
                target = min(free, key=lambda h: (h.sent_to, h.since))
                target.sent_to += 1
        for index in run:
            held = holders if index == run.start else self._holders(task, index, now)
            if not any(h.url == asker for h in held):
                held.append(Holder(asker, now))
        return target.url if target else None

    def _holders(self, task: str, index: int, now: float) -> list[Holder]:
        """The recent holders of a piece (a list the book keeps: append to it), most recently used last."""
        key = (task, index)
        holders = [h for h in self._pieces.pop(key, []) if now - h.since <= REMEMBER_SECONDS]
        self._pieces[key] = holders
        while len(self._pieces) > MAX_PIECES:
            self._pieces.popitem(last=False)
        return holders
