"""Writes a download to its data file and hashes it, off the event loop.

The event loop only receives bytes. One worker thread writes them at their offsets,
another feeds them to the digest, in order; pwrite and hashlib release the GIL, so on
a two-core node the disk and the digest run beside the network instead of after it.
At most ``max_in_flight`` chunks wait for the workers, which bounds memory and pushes
back on the sender.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from damselfly.p2p.pieces import PIECE_DIGEST_ALGORITHM, piece_hasher


def pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> int:
    """Write all of ``data`` at ``offset`` (pwrite may write less); return the end offset."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    return offset


class SequentialWriter:
    """With ``piece_length``, also records each piece's digest in ``piece_digests`` before
    reporting the bytes as written, so a piece is never announced without its digest."""

    def __init__(self, path: Path, hasher: "hashlib._Hash", on_written: Callable[[int], None],
                 max_in_flight: int = 16, piece_length: int | None = None,
                 piece_digests: dict[int, str] | None = None) -> None:
        self._fd = os.open(path, os.O_WRONLY)
        self._hasher = hasher
        self._piece_length = piece_length
        self._piece_digests = piece_digests if piece_digests is not None else {}
        self._piece_hasher = piece_hasher()
        self._hashed = 0
        self._on_written = on_written
        self._max_in_flight = max_in_flight
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="blob-write")
        self._digest = ThreadPoolExecutor(1, thread_name_prefix="blob-hash")
        self._pending: deque[asyncio.Future[list[int | None]]] = deque()
        self.offset = 0  # bytes handed to the workers
        self._failed = False

    def _write(self, chunk: bytes, offset: int) -> int:
        return pwrite_all(self._fd, chunk, offset)

    def _hash(self, chunk: bytes) -> None:
        self._hasher.update(chunk)
        if self._piece_length is None:
            return
        view = memoryview(chunk)
        while view:
            room = self._piece_length - self._hashed % self._piece_length
            part, view = view[:room], view[room:]
            self._piece_hasher.update(part)
            self._hashed += len(part)
            if self._hashed % self._piece_length == 0:
                self._finish_piece()

    def _finish_piece(self) -> None:
        index = (self._hashed - 1) // self._piece_length
        self._piece_digests[index] = f"{PIECE_DIGEST_ALGORITHM}:{self._piece_hasher.hexdigest()}"
        self._piece_hasher = piece_hasher()

    def _written(self, future: asyncio.Future[list[int | None]]) -> None:
        """Report progress in order; after a failed write, nothing more counts as written."""
        if future.cancelled() or future.exception() is not None:
            self._failed = True
        elif not self._failed:
            self._on_written(future.result()[0])  # type: ignore[arg-type]

    async def write(self, chunk: bytes) -> None:
        """Queue ``chunk`` after the bytes before it; wait while too many chunks are queued."""
        loop = asyncio.get_running_loop()
        both = asyncio.gather(loop.run_in_executor(self._disk, self._write, chunk, self.offset),
                              loop.run_in_executor(self._digest, self._hash, chunk))
        both.add_done_callback(self._written)
        self._pending.append(both)
        self.offset += len(chunk)
        while self._pending and (self._pending[0].done() or len(self._pending) > self._max_in_flight):
            await self._pending.popleft()  # raises a worker's OSError, if any

    async def digest(self) -> str:
        """Wait for every queued chunk to be written and hashed; return the hex digest."""
        while self._pending:
            await self._pending.popleft()
        if self._piece_length is not None and self._hashed % self._piece_length:
            self._finish_piece()  # the short last piece
        return self._hasher.hexdigest()

    async def close(self) -> None:
        """Stop the workers after what is queued; safe after a failure."""
        for future in self._pending:
            future.cancel()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._disk.shutdown, True)
        await loop.run_in_executor(None, self._digest.shutdown, True)
        os.close(self._fd)
