"""A task: one blob being assembled from pieces, and the readers waiting on it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from damselfly.lib.oci import Digest
from damselfly.p2p.pieces import PieceBitmap, piece_count, piece_length_for, piece_span


class TaskFailed(Exception):
    """The download behind a task failed; readers stop with this reason."""


class Task:
    """In-memory state of one blob: its data file, which pieces are verified, its readers.

    A task whose bitmap is full and whose data file is in the store is ``complete``;
    readers of it never wait.
    """

    def __init__(self, digest: Digest, length: int, path: Path, *, complete: bool = False,
                 piece_length: int | None = None) -> None:
        self.digest = digest
        self.length = length
        self.path = path
        self.piece_length = piece_length or piece_length_for(length)
        count = piece_count(length, self.piece_length)
        self.bitmap = PieceBitmap.full(count) if complete else PieceBitmap(count)
        self.error: str | None = None
        self._changed = asyncio.Event()

    @property
    def complete(self) -> bool:
        return self.bitmap.complete

    def piece_done(self, index: int) -> None:
        self.bitmap.add(index)
        self._wake()

    def pieces_done_below(self, offset: int) -> None:
        """Mark every whole piece that ends at or before ``offset`` (sequential writers)."""
        index = self.bitmap.done
        while index < self.bitmap.count:
            start, size = piece_span(index, self.length, self.piece_length)
            if start + size > offset:
                break
            self.bitmap.add(index)
            index += 1
        self._wake()

    def fail(self, reason: str) -> None:
        self.error = reason
        self._wake()

    def move_to(self, path: Path) -> None:
        self.path = path

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def readable_end(self, offset: int, stall_timeout: float) -> int:
        """Wait until verified bytes start at ``offset``; return where they end (exclusive).

        Raises TaskFailed when the download fails or makes no progress for ``stall_timeout``.
        """
        while True:
            if self.error is not None:
                raise TaskFailed(self.error)
            end = self.bitmap.contiguous_end(offset, self.length, self.piece_length)
            if end > offset:
                return end
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), stall_timeout)
            except TimeoutError:
                raise TaskFailed(f"no progress on {self.digest} for {stall_timeout:.0f}s") from None
