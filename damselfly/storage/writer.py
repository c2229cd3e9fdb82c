"""Copies a download from its source into the task's data file, off the event loop.

Two threads per download: one reads the source into a small pool of 1 MiB buffers,
digests each piece (BLAKE3) and writes it at its offset; the other feeds the same
buffers, in order, to the blob's own digest (SHA-256, the slowest step) when the copy
is the whole blob. Socket reads,
hashing and pwrite release the GIL, so on a two-core node they run beside the event
loop instead of through it. The pool bounds memory and pushes back on the source.

On two cores a cold pull is bound by CPU (per 256 MiB: 0.2 s of SHA-256 on one thread,
0.19 s of reading, BLAKE3 and pwrite on the other, 0.1 s on the loop). Alternatives
measured against this shape, alternating on 256 MiB pulls, were worse or within the
noise: 4 MiB buffers (2.7-4.6 CPU s/GiB against 2.0-2.3), 16 buffers, 512 KiB buffers,
a report every 4 MiB, the SHA-256 on the copying thread, or the piece digests and
reports on the hashing thread (this shape won 7 of 10 pairs against that one). Only
dropping BLAKE3 helped (10% less CPU, 7 of 10 pairs won): the seed reports each piece's
digest as the piece lands, so computing them lazily is the network's change to make.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Protocol

from damselfly.core.pieces import PieceHasher
from damselfly.storage.task import Task, TaskFailed

BUFFER_SIZE = 1024 * 1024
BUFFERS = 8
FORWARD_STEP = 64 * 1024  # piece by piece: bytes written between reports, which uploads may send on


class BlockingSource(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


class CopySource(BlockingSource, Protocol):
    """A download being copied: read on a worker thread, stopped from the event loop."""

    def abort(self) -> None:
        """From any thread: make a blocked ``readinto`` fail at once."""

    def close(self) -> None: ...


class SourceTooShort(Exception):
    """The source ended before the length it announced."""


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    """Write all of ``data`` at ``offset`` (pwrite may write less); return the end offset."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    return offset


def copy_to_file(source: BlockingSource, path: Path, start: int, length: int, piece_length: int,
                 piece_digests: dict[int, str], on_written: Callable[[int], None],
                 blob_hasher: "hashlib._Hash | None" = None, piece_by_piece: bool = False) -> str | None:
    """Blocking: copy ``length`` bytes of ``source`` to ``path`` at ``start`` (a piece boundary).

    Each piece's digest goes into ``piece_digests`` before ``on_written(offset)`` reports
    the bytes up to ``offset`` as written, so a piece is never announced without it.
    ``piece_by_piece``: report every FORWARD_STEP bytes and each piece as soon as its last
    byte is in (a range a reader waits for, which an upload forwards as it arrives), not once
    a 1 MiB buffer has filled (a whole blob, where fewer, larger steps cost less: a 64 MiB
    cold pull took 25% more CPU in 256 KiB steps).
    With ``blob_hasher`` (a copy of the whole blob), returns the blob's hex digest.
    """
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(BUFFERS):
        free.put(bytearray(BUFFER_SIZE))
    filled: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
    hashing = threading.Thread(target=_hash_in_order, args=(filled, free, blob_hasher), name="blob-hash", daemon=True)
    hashing.start()
    fd = os.open(path, os.O_WRONLY)
    end = start + length
    try:
        offset, piece = start, PieceHasher()
        while offset < end:
            buffer = free.get()
            step = min(BUFFER_SIZE, end - offset)
            if piece_by_piece:  # http.client fills the whole buffer it is given before it returns
                step = min(step, piece_length - offset % piece_length, FORWARD_STEP - offset % FORWARD_STEP)
            count = _fill(source, memoryview(buffer)[:step])
            if count == 0:
                filled.put((buffer, 0))
                raise SourceTooShort(f"source closed after {offset - start} of {length} bytes")
            view = memoryview(buffer)[:count]
            pwrite_all(fd, view, offset)
            while view:  # the piece digests, across piece boundaries inside this buffer
                room = piece_length - offset % piece_length
                part, view = view[:room], view[room:]
                piece.update(part)
                offset += len(part)
                if offset % piece_length == 0 or offset == end:
                    piece_digests[(offset - 1) // piece_length] = piece.digest()
                    piece = PieceHasher()
            filled.put((buffer, count))
            on_written(offset)
    finally:
        filled.put(None)
        hashing.join()
        os.close(fd)
    return blob_hasher.hexdigest() if blob_hasher is not None else None


async def copy_into_task(copiers: Executor, source: CopySource, task: Task, start: int, length: int,
                         on_written: Callable[[int, int, range], None], blob_hasher: "hashlib._Hash | None" = None,
                         piece_by_piece: bool = False) -> str | None:
    """Copy ``length`` bytes of ``source`` into ``task``'s file at ``start`` on a ``copiers`` thread.

    On the event loop, each span written marks the pieces it completes (their digests are
    already in ``task.digests``), then ``on_written(begin, end, pieces)`` hears of it. Cancelling aborts the source, so the thread's next
    read fails at once; the source is closed on every path; a short source fails the task.
    Returns what ``copy_to_file`` returns.
    """
    loop = asyncio.get_running_loop()
    reported = start

    def landed(begin: int, end: int) -> None:
        on_written(begin, end, task.pieces_written(begin, end))

    def written(offset: int) -> None:  # on the copying thread
        nonlocal reported
        with contextlib.suppress(RuntimeError):  # the loop closed under a copy being aborted
            loop.call_soon_threadsafe(landed, reported, offset)
        reported = offset

    pieces = range(start // task.piece_length, -(-(start + length) // task.piece_length))
    task.fetch_started(pieces)
    try:
        copying = loop.run_in_executor(copiers, functools.partial(
            copy_to_file, source, task.path, start, length, task.piece_length, task.digests, written, blob_hasher,
            piece_by_piece))
        return await asyncio.shield(copying)
    except asyncio.CancelledError:
        source.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(copying, 10)
        raise
    except SourceTooShort as exc:
        raise TaskFailed(str(exc)) from None
    finally:
        source.close()
        task.fetch_ended(pieces)


def file_digest(path: Path, hasher: "hashlib._Hash") -> str:
    """Blocking: the hex digest of a whole data file (a blob assembled out of order)."""
    with open(path, "rb") as f:
        hash_file(f.fileno(), os.fstat(f.fileno()).st_size, hasher)
    return hasher.hexdigest()


def hash_file(fd: int, count: int, hasher: "hashlib._Hash", start: int = 0) -> None:
    """Blocking: feed bytes ``start..count`` of the open file ``fd`` to ``hasher`` (by
    offset: whoever else reads the file keeps its position)."""
    offset = start
    while offset < count:
        chunk = os.pread(fd, min(4 << 20, count - offset), offset)
        if not chunk:
            raise TaskFailed(f"the data file ended at {offset} of {count} bytes")
        hasher.update(chunk)
        offset += len(chunk)


def read_hashed(source: BlockingSource, size: int, hasher: "hashlib._Hash") -> bytearray:
    """Blocking: up to ``size`` bytes of ``source`` (fewer only at its end), fed to ``hasher``
    on the same thread: a stream that is not stored is checked as it goes."""
    buffer = bytearray(size)
    count = _fill(source, memoryview(buffer))
    del buffer[count:]
    hasher.update(buffer)
    return buffer


def _fill(source: BlockingSource, view: memoryview) -> int:
    """Read until ``view`` is full or the source ends: fewer, larger steps for the threads
    (an http.client body fills its whole buffer anyway)."""
    total = 0
    while total < len(view):
        count = source.readinto(view[total:])
        if count == 0:
            break
        total += count
    return total


def _hash_in_order(filled: "queue.Queue[tuple[bytearray, int] | None]", free: "queue.Queue[bytearray]",
                   hasher: "hashlib._Hash | None") -> None:
    """Feed the buffers to the blob's digest in order (without one, just hand them back)."""
    while (item := filled.get()) is not None:
        buffer, count = item
        if hasher is not None:
            hasher.update(memoryview(buffer)[:count])
        free.put(buffer)
