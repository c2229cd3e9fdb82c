"""The nydus chunk cache: per blob, a sparse file of its uncompressed space and a chunk bitmap,
all of a mount's blobs under one quota.

The names follow nydusd's cache, but bit i is the i-th chunk by uncompressed offset (not
nydusd's numbering): do not share a directory with nydusd.

``<blob id>.blob.data`` has the layout EROFS reads (a chunk sits at its uncompressed offset),
so a cached range is served with one pread. ``<blob id>.chunk_map`` holds one bit per chunk
and is written after the chunk's bytes; both survive restarts. Because a crash can leave a
bit set over bytes that never reached the disk, a chunk found in the map is checked against
its digest the first time this process reads it.

A mount's caches share a :class:`CacheQuota`: past it, the least recently used chunks are
evicted (their bit cleared, then their blocks punched out of the data file). Evicting bytes
another process may be serving would be wrong, so a process holds its blobs' files
exclusively (a flock on the map); a blob another mount holds gets files of this process's
own, which vanish with it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import threading
from collections import Counter, OrderedDict
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from damselfly.nydus import codec
from damselfly.nydus.layout import BLOCK_SIZE, ChunkRecord, Digester

log = logging.getLogger("damselfly.nydus.cache")

_FALLOC_FL_KEEP_SIZE = 0x1
_FALLOC_FL_PUNCH_HOLE = 0x2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give a range's blocks back to the file system; the file keeps its size and reads zeros there."""
    if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def disk_size(chunk: ChunkRecord) -> int:
    """What a cached chunk takes on disk: it starts on a block and owns the rest of its last one."""
    return -(-chunk.uncompressed_size // BLOCK_SIZE) * BLOCK_SIZE


class CacheQuota:
    """The most chunk bytes one mount's caches hold, the least recently used evicted first.

    Chunks in use (a read serving them, a store writing them) are pinned and never evicted
    under their user: the caches exceed the limit only by what is pinned, and come back
    within it as each use ends. Evictions happen under this one lock, and only to chunks
    nobody has pinned, so an eviction never meets a store of the same chunk halfway."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.evicted = 0  # chunks, since this mount started
        self._order: OrderedDict[tuple[ChunkCache, int], int] = OrderedDict()  # oldest use first
        self._pins: Counter[tuple[ChunkCache, int]] = Counter()
        self._lock = threading.Lock()

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes fit without evicting anything."""
        with self._lock:
            return self.used + size <= self.limit

    def adopt(self, cache: ChunkCache, indexes: Iterable[int]) -> None:
        """Chunks a cache found from an earlier mount, before this one used any: the first to go."""
        with self._lock:
            for index in indexes:
                self._use(cache, index)
            self._trim()

    def admit(self, cache: ChunkCache, index: int) -> None:
        """Count a chunk about to be written as the most recently used, and evict what the limit
        needs first: the disk never holds bytes the quota has not counted."""
        with self._lock:
            self._use(cache, index)
            self._trim()

    @contextmanager
    def pinned(self, cache: ChunkCache, indexes: Iterable[int]) -> Iterator[None]:
        """Keep these chunks from eviction while they are read or written; on the way out they
        count as just used."""
        keys = [(cache, index) for index in indexes]
        with self._lock:
            self._pins.update(keys)
        try:
            yield
        finally:
            with self._lock:
                self._pins.subtract(keys)
                for key in keys:
                    if self._pins[key] <= 0:
                        self._pins.pop(key, None)
                    if key in self._order:
                        self._order.move_to_end(key)
                self._trim()

    def _use(self, cache: ChunkCache, index: int) -> None:
        key = (cache, index)
        if key not in self._order:
            self._order[key] = disk_size(cache.chunks[index])
            self.used += self._order[key]
        self._order.move_to_end(key)

    def _trim(self) -> None:
        excess = self.used - self.limit
        victims = []
        for key, size in self._order.items():
            if excess <= 0:
                break
            if not self._pins[key]:
                victims.append(key)
                excess -= size
        for cache, index in victims:
            self.used -= self._order.pop((cache, index))
            self.evicted += 1
            cache.evict(index)

    def forget(self, cache: ChunkCache) -> None:
        """A cache being closed: its chunks leave the quota's books (they stay on disk)."""
        with self._lock:
            for key in [key for key in self._order if key[0] is cache]:
                self.used -= self._order.pop(key)


def _open_exclusively(directory: Path, blob_id: str) -> tuple[int, int]:
    """The blob's data and map files, the map flocked for as long as this process has it open.
    When another process holds them: nameless files of this process's own (O_TMPFILE)."""
    map_fd = os.open(directory / f"{blob_id}.chunk_map", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(map_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(map_fd)
        log.info("blob %s is cached by another mount; this one keeps a private cache of it", blob_id[:12])
        private = os.O_RDWR | os.O_TMPFILE
        return os.open(directory, private, 0o600), os.open(directory, private, 0o600)
    return os.open(directory / f"{blob_id}.blob.data", os.O_RDWR | os.O_CREAT, 0o644), map_fd


class ChunkCache:
    """One blob's cached chunks: the data file reads are served from, and the map of what it holds."""

    def __init__(self, directory: Path, blob_id: str, size: int, chunks: list[ChunkRecord],
                 digester: Digester, quota: CacheQuota) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.blob_id = blob_id
        self.chunks = chunks
        self.digester = digester
        self.size = size
        self.quota = quota
        self._lock = threading.Lock()
        self.data_path = directory / f"{blob_id}.blob.data"
        self._data, self._map = _open_exclusively(directory, blob_id)
        if os.fstat(self._data).st_size != size:
            os.ftruncate(self._data, size)
        map_bytes = (len(chunks) + 7) // 8
        self.bitmap = bytearray(os.pread(self._map, map_bytes, 0).ljust(map_bytes, b"\0"))
        self._checked: set[int] = set()
        quota.adopt(self, [index for index in range(len(chunks)) if self.has(index)])

    def close(self) -> None:
        self.quota.forget(self)
        os.close(self._data)
        os.close(self._map)

    def has(self, index: int) -> bool:
        return bool(self.bitmap[index >> 3] & (1 << (index & 7)))

    def cached_count(self) -> int:
        return sum(1 for i in range(len(self.chunks)) if self.has(i))

    def usable(self, index: int) -> bool:
        """In the map and, once per process, found to match its digest. A stale bit stays until
        the chunk is fetched again: clearing it here could race with that fetch's store."""
        if not self.has(index):
            return False
        if index in self._checked:
            return True
        chunk = self.chunks[index]
        data = os.pread(self._data, chunk.uncompressed_size, chunk.uncompressed_offset)
        if codec.chunk_digest(self.digester, data) != chunk.digest:
            return False
        with self._lock:
            self._checked.add(index)
        return True

    def in_use(self, indexes: Iterable[int]) -> AbstractContextManager[None]:
        """Chunks a read needs, kept from eviction until it has them."""
        return self.quota.pinned(self, indexes)

    def store(self, index: int, data: bytes) -> None:
        """Write a chunk, then its bit (on disk after the bytes it vouches for). A failed write
        leaves the chunk counted by the quota until it is evicted: room held, never room lacking."""
        chunk = self.chunks[index]
        with self.quota.pinned(self, [index]):  # no eviction may punch out the bytes being written
            self.quota.admit(self, index)
            written = os.pwrite(self._data, data, chunk.uncompressed_offset)
            if written != len(data):
                raise OSError(f"short write to {self.data_path}")
            with self._lock:
                self._checked.add(index)
                self._set_bit(index, True)

    def evict(self, index: int) -> None:
        """Drop a chunk (the quota's lock is held): its bit goes first, so that a crash leaves
        bytes nobody trusts rather than a bit over a hole."""
        chunk = self.chunks[index]
        with self._lock:
            self._checked.discard(index)
            self._set_bit(index, False)
        try:
            punch_hole(self._data, chunk.uncompressed_offset, disk_size(chunk))
        except OSError as error:  # the bit is clear: correct, only the disk space stays taken
            log.warning("chunk cache of blob %s cannot free chunk %d: %s", self.blob_id[:12], index, error)

    def _set_bit(self, index: int, value: bool) -> None:
        mask, byte = 1 << (index & 7), self.bitmap[index >> 3]
        self.bitmap[index >> 3] = byte | mask if value else byte & ~mask
        os.pwrite(self._map, bytes([self.bitmap[index >> 3]]), index >> 3)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._data, size, offset)
