"""Which peer a seed sends an asker to, when it already sends the same piece to others.

Nodes that start one image at once read the same chunks at about the same moment (nydus
especially: each read waits for its piece). The scheduler hears of a peer's new piece a
report and a poll later, so every peer asks the seed, whose link then carries each piece
once per peer. The seed knows better: it sends a piece straight to its first askers and
points later ones at a peer that has it or is getting it, building a small tree per
piece. The asker checks the piece against the digest the seed gives with the pointer.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DIRECT = 2  # askers a seed serves itself for each piece
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

    def route(self, task: str, index: int, asker: str) -> str | None:
        """The upload URL to send ``asker`` to for piece ``index`` of ``task``, or None to serve it.

        Either way the asker is remembered as a holder that later askers may be sent to.
        """
        key = (task, index)
        now = self.clock()
        holders = [h for h in self._pieces.pop(key, []) if now - h.since <= REMEMBER_SECONDS]
        self._pieces[key] = holders
        while len(self._pieces) > MAX_PIECES:
            self._pieces.popitem(last=False)
        if any(h.url == asker for h in holders):
            return None  # asking again (its relay failed, or it was busy): others may wait on it, so serve it
        target = None
        if len(holders) >= DIRECT:
            free = [h for h in holders if h.sent_to < FANOUT]
            if free:
                target = min(free, key=lambda h: (h.sent_to, h.since))
                target.sent_to += 1
        holders.append(Holder(asker, now))
        return target.url if target else None
