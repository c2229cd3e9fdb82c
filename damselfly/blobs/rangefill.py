"""Filling a task from the origin with range requests, the pieces readers wait for first.

A blob read whole (an OCI layer) is best fetched as one GET in order. A blob read in
ranges (a nydus blob: a few chunks here and there) is not: a reader at 30 MiB would wait
for one stream to get there. Seed peers fill such tasks, and peers sent back to source
fill their missing pieces, with bounded range requests instead: the piece a reader waits
for goes first, the rest follows in runs. Each byte is asked of the registry once, and
the bytes go through the same copier as a whole-blob download (piece digests, pwrite),
on worker threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor

from damselfly.lib.waiting import wait_until_set
from damselfly.storage.task import Task
from damselfly.storage.writer import CopySource, copy_into_task

URGENT_RUN = 2  # the fewest pieces in a range for a waiting reader (the one it waits for and the next)
BACKGROUND_RUN_BYTES = 8 * 1024 * 1024  # at most per range of the rest of the blob
STREAMS = 3  # ranges in flight at once
ON_DEMAND_QUIET = 0.5  # seconds without a waiting reader before a task read in ranges fetches the rest


OpenRange = Callable[[int, int], Awaitable[CopySource]]  # (start, length) -> a stream of those bytes


def next_run(count: int, fetchable: Callable[[int], bool], wanted: Mapping[int, int], urgent_pieces: int,
             run_pieces: int, rest: bool) -> tuple[int, int] | None:
    """The next run of pieces to ask for, as (first index, number of pieces), or None.

    ``fetchable(i)``: piece i is neither held nor being fetched. ``wanted`` maps each piece
    a reader waits for to the last piece that reader reads up to. A waited-for piece comes
    first, with the pieces up to that last one (at least ``urgent_pieces``, at most
    ``run_pieces``): one range for one read, not a range and then another for its end.
    Otherwise, if the ``rest`` may come, the lowest fetchable piece with up to
    ``run_pieces``. A run never crosses a piece that is held or in flight, so no byte is
    asked for twice.
    """
    waiting = sorted(i for i in wanted if 0 <= i < count and fetchable(i))
    if waiting:
        first = waiting[0]
        limit = max(urgent_pieces, min(wanted[first] - first + 1, run_pieces))
    elif not rest:
        return None
    else:
        first = next((i for i in range(count) if fetchable(i)), None)
        if first is None:
            return None
        limit = run_pieces
    size = 1
    while size < limit and first + size < count and fetchable(first + size):
        size += 1
    return first, size


class RangeFill:
    """Fills the missing pieces of ``task`` with ranges from ``open_range``."""

    def __init__(self, task: Task, open_range: OpenRange, copiers: Executor,
                 on_bytes: Callable[[int], None] = lambda n: None, on_piece: Callable[[int], None] = lambda i: None
                 ) -> None:
        self.task = task
        self.open_range = open_range
        self.copiers = copiers
        self.on_bytes = on_bytes
        self.on_piece = on_piece
        self.in_flight: set[int] = set()
        self.failure: BaseException | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _fetchable(self, index: int) -> bool:
        return not self.task.has_or_holds(index) and index not in self.in_flight

    def _missing(self) -> bool:
        return any(not self.task.has_or_holds(i) for i in range(self.task.piece_count))

    async def run(self) -> None:
        """Return when every piece is held; raise the first failure (the other ranges stop)."""
        unsubscribe = self.task.reader_waiting.subscribe(self._notify)
        workers = [asyncio.create_task(self._work()) for _ in range(STREAMS)]
        try:
            while self._missing() and self.failure is None:
                await wait_until_set(self._changed, 1.0)
        finally:
            unsubscribe()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if self.failure is not None:
            raise self.failure

    async def _work(self) -> None:
        run_pieces = max(1, BACKGROUND_RUN_BYTES // self.task.piece_length)
        while True:
            run = next_run(self.task.piece_count, self._fetchable, self.task.wanted_until, URGENT_RUN, run_pieces,
                           rest=self.task.rest_may_follow(ON_DEMAND_QUIET))
            if run is None:
                await wait_until_set(self._changed, 0.5)
                continue
            first, size = run
            pieces = range(first, first + size)
            self.in_flight.update(pieces)
            try:
                await self._fetch(first, size)
            except Exception as exc:  # noqa: BLE001 - the fill fails with the first failure, whatever it is
                self.failure = self.failure or exc
                self._notify()
                return
            finally:
                self.in_flight.difference_update(pieces)
            self._notify()

    async def _fetch(self, first: int, size: int) -> None:
        start = self.task.piece_span(first)[0]
        end = sum(self.task.piece_span(first + size - 1))
        stream = await self.open_range(start, end - start)
        await copy_into_task(self.copiers, stream, self.task, start, end - start, self._written, piece_by_piece=True)

    def _written(self, begin: int, end: int, pieces: range) -> None:
        """Bytes ``begin..end`` of a range are on disk, completing ``pieces``: count and tell."""
        self.on_bytes(end - begin)
        for index in pieces:
            self.on_piece(index)
