"""A task: one blob being assembled from pieces, and the readers waiting on it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Generic, ParamSpec

from damselfly.lib.waiting import wait_until_set
from damselfly.core.oci import Digest
from damselfly.core.pieces import PieceBitmap, piece_count, piece_length_for, piece_span


class TaskFailed(Exception):
    """The download behind a task failed; readers stop with this reason."""


Args = ParamSpec("Args")


class Listeners(Generic[Args]):
    """The callbacks on one kind of task event. Each module subscribes its own and removes
    only its own (with what ``subscribe`` returns): none saves and restores another's."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[Args, None]] = []

    def subscribe(self, callback: Callable[Args, None]) -> Callable[[], None]:
        """Call ``callback`` on every event from now on; return what unsubscribes it."""
        self._callbacks.append(callback)
        subscribed = True

        def unsubscribe() -> None:
            nonlocal subscribed
            if subscribed:  # once: the same callback may be subscribed again by someone else
                self._callbacks.remove(callback)
                subscribed = False

        return unsubscribe

    def emit(self, *args: Args.args, **kwargs: Args.kwargs) -> None:
        for callback in tuple(self._callbacks):  # one may unsubscribe while they run
            callback(*args, **kwargs)


class Task:
    """In-memory state of one blob: its data file, which pieces are verified, its readers.

    A task whose bitmap is full and whose data file is in the store is ``complete``;
    readers of it never wait.
    """

    def __init__(self, digest: Digest, length: int, path: Path, *, complete: bool = False,
                 piece_length: int | None = None) -> None:
        self.digest = digest
        self.ranged = False  # the download was started for a range reader (nydus), not a whole-blob reader
        self.length = length
        self.path = path
        self.piece_length = piece_length or piece_length_for(length)
        count = piece_count(length, self.piece_length)
        self.bitmap = PieceBitmap.full(count) if complete else PieceBitmap(count)
        self.digests: dict[int, str] = {}  # sha256 per piece, where known
        self.error: str | None = None
        self.piece_landed = Listeners[[int]]()  # a piece is verified and counted (the store weighs it, a seed reports it)
        self.wanted: Counter[int] = Counter()  # pieces that readers are waiting for right now
        self.wanted_until: dict[int, int] = {}  # for each wanted piece, the last piece its readers read up to
        self.reader_waiting = Listeners[[]]()  # a reader starts waiting for a piece: the downloader looks again
        self.whole_readers = 0  # readers streaming the blob from its first byte to its last
        self.fetching: dict[int, range] = {}  # pieces on their way now (from a parent or the origin), each with its run
        # How far (an absolute offset) a copy from the origin has written each piece it is in
        # the middle of, before the piece is whole and hashed: an upload may send those bytes
        # on at once and the piece's digest after them. Never the last piece's (see piece_done).
        self.arriving: dict[int, int] = {}
        self.last_wanted = time.monotonic()  # when a reader last started or stopped waiting for a piece
        self._last_held = False
        self._last_released = False
        self._changed = asyncio.Event()  # set when pieces land or the task fails: readers look again
        self._fetches_changed = asyncio.Event()  # ... or when a request for pieces ends

    @property
    def complete(self) -> bool:
        return self.bitmap.complete

    @property
    def piece_count(self) -> int:
        return self.bitmap.count

    def piece_span(self, index: int) -> tuple[int, int]:
        return piece_span(index, self.length, self.piece_length)

    def piece_done(self, index: int) -> None:
        """A piece is verified and on disk. The last piece is held back until ``release_last``:
        readers never reach the end of a blob whose digest was not checked."""
        if self.bitmap.has(index):
            return
        if index == self.bitmap.count - 1 and not self._last_released:
            self._last_held = True
            self._wake()  # range readers may read it (see ``readable_end``)
            return
        self.bitmap.add(index)
        self.piece_landed.emit(index)
        self._wake()

    def release_last(self) -> None:
        """The whole blob matched its digest on this node: let whole readers have the last piece.
        Nothing else may call it (a scheduler's word, a seed's, is not this node's check)."""
        self._last_released = True
        if self._last_held:
            self._last_held = False
            self.piece_done(self.bitmap.count - 1)

    def fetch_started(self, run: range) -> None:
        """A request for the pieces ``run`` has gone to a parent or the origin: an upload
        waiting for one of them may start sending it."""
        self.fetching.update(dict.fromkeys(run, run))
        self._wake_fetch_waiters()

    def fetch_ended(self, run: range) -> None:
        """The request for ``run`` is over (its pieces landed or not): whoever waits in
        ``arrival`` or ``more`` for one that did not land stops waiting."""
        for index in run:
            self.fetching.pop(index, None)
            self.arriving.pop(index, None)
        self._wake_fetch_waiters()

    def sendable_end(self, index: int) -> int:
        """End (absolute) of the bytes of piece ``index`` an upload may send now: all of a
        verified piece, or what a copy from the origin has written of one on its way."""
        start, size = self.piece_span(index)
        return start + size if self.bitmap.has(index) else self.arriving.get(index, start)

    async def more(self, index: int, sent: int, timeout: float) -> bool:
        """Wait until piece ``index`` is verified here or has bytes past ``sent`` (absolute):
        False as soon as it is neither here nor on its way, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.bitmap.has(index) and self.sendable_end(index) <= sent:
            remaining = deadline - time.monotonic()
            coming = index in self.fetching or self.has_or_holds(index)  # held: the whole blob's check is next
            if self.error is not None or not coming or remaining <= 0:
                return False
            await wait_until_set(self._fetches_changed, remaining)
        return True

    async def arrival(self, index: int, timeout: float) -> bool:
        """Wait for piece ``index``: True once it is verified here; False as soon as it is
        neither here nor on its way from a parent, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.bitmap.has(index):
            remaining = deadline - time.monotonic()
            if self.error is not None or index not in self.fetching or remaining <= 0:
                return False
            await wait_until_set(self._fetches_changed, remaining)
        return True

    def has_or_holds(self, index: int) -> bool:
        return self.bitmap.has(index) or (self._last_held and index == self.bitmap.count - 1)

    def needed(self, index: int) -> bool:
        """Piece ``index`` is neither here nor on its way from a parent: one to ask for."""
        return not self.has_or_holds(index) and index not in self.fetching

    def pieces_written(self, begin: int, end: int) -> range:
        """A copy from the origin has just filled bytes ``begin..end``: mark the pieces that now
        end inside them (the one holding ``begin`` included, whose first bytes came earlier)
        and return them; note how far the piece it is in the middle of has come."""
        first = index = begin // self.piece_length
        while index < self.bitmap.count and sum(piece_span(index, self.length, self.piece_length)) <= end:
            self.arriving.pop(index, None)
            self.piece_done(index)
            index += 1
        if index < self.bitmap.count - 1 and end > index * self.piece_length:
            self.arriving[index] = end
            self._wake_fetch_waiters()
        return range(first, index)

    def rest_may_follow(self, quiet: float) -> bool:
        """Whether to fetch pieces that no reader waits for, now.

        Yes while a reader streams the whole blob, or waits for the held last piece (it needs
        the whole blob checked). For a blob read in ranges (nydus), only once its readers have
        waited for nothing for ``quiet`` seconds: on a shaped link the rest of the blob would
        queue ahead of their next read.
        """
        if self.whole_readers or (self._last_held and self.bitmap.count - 1 in self.wanted):
            return True
        return not self.wanted and time.monotonic() - self.last_wanted >= quiet

    def fail(self, reason: str) -> None:
        self.error = reason
        self._wake()

    def move_to(self, path: Path) -> None:
        self.path = path

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        self._wake_fetch_waiters()

    def _wake_fetch_waiters(self) -> None:
        """Only ``arrival`` and ``more`` look again: a request that ended without its pieces,
        or bytes not yet verified, are no progress for readers, whose stall timeout must keep
        running."""
        self._fetches_changed.set()
        self._fetches_changed = asyncio.Event()

    def verified_end(self, offset: int, whole: bool = True) -> int:
        """End (exclusive) of the verified bytes from ``offset`` on (``offset`` itself: none).

        A ``whole`` reader (containerd: the blob from its first byte to its last) never gets
        the last piece before this node checked the whole blob; a range reader (nydus) may
        read it once it matched its piece digest, as it reads any other piece: nothing it
        gets is served as the complete blob.
        """
        end = self.bitmap.contiguous_end(offset, self.length, self.piece_length)
        if not whole and self._last_held and end >= (self.bitmap.count - 1) * self.piece_length:
            return self.length
        return end

    async def wait_change(self, timeout: float) -> None:
        """Return when a piece lands or the task fails, or after ``timeout`` seconds."""
        await wait_until_set(self._changed, timeout)

    async def readable_end(self, offset: int, stall_timeout: float, until: int | None = None,
                           whole: bool = True, on_its_way: bool = False) -> int:
        """Wait until verified bytes start at ``offset``; return where they end (exclusive).

        ``until`` is the last byte the reader goes on to (its range's end): the download may
        ask for the pieces up to it together. ``whole``: see ``verified_end`` (the safe
        default holds the last piece). ``on_its_way``: return as soon as the piece holding
        ``offset`` is being fetched (an upload sends it as it arrives), then ``offset`` when
        none of it is verified yet; requests starting then count as progress. Raises
        TaskFailed when the download fails or makes no progress for ``stall_timeout``.
        """
        while True:
            if self.error is not None:
                raise TaskFailed(self.error)
            end = self.verified_end(offset, whole)
            if end > offset or (on_its_way and offset // self.piece_length in self.fetching):
                return end
            changed = self._fetches_changed if on_its_way else self._changed  # the first is set with the second
            piece = offset // self.piece_length
            self.wanted[piece] += 1
            reach = piece if until is None else max(piece, until // self.piece_length)
            self.wanted_until[piece] = max(reach, self.wanted_until.get(piece, piece))
            self.last_wanted = time.monotonic()
            self.reader_waiting.emit()
            try:
                if not await wait_until_set(changed, stall_timeout):
                    raise TaskFailed(f"no progress on {self.digest} for {stall_timeout:.0f}s")
            finally:
                self.last_wanted = time.monotonic()
                self.wanted[piece] -= 1
                if self.wanted[piece] <= 0:
                    del self.wanted[piece]
                    del self.wanted_until[piece]
