"""The nydus chunk cache: per blob, a sparse file of its uncompressed space and a chunk bitmap.

The names follow nydusd's cache, but bit i is the i-th chunk by uncompressed offset (not
nydusd's numbering): do not share a directory with nydusd.

``<blob id>.blob.data`` has the layout EROFS reads (a chunk sits at its uncompressed offset),
so a cached range is served with one pread. ``<blob id>.chunk_map`` holds one bit per chunk
and is written after the chunk's bytes; both survive restarts. Because a crash can leave a
bit set over bytes that never reached the disk, a chunk found in the map is checked against
its digest the first time this process reads it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from damselfly.nydus import codec
from damselfly.nydus.layout import ChunkRecord, Digester


class ChunkCache:
    def __init__(self, directory: Path, blob_id: str, size: int, chunks: list[ChunkRecord],
                 digester: Digester) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.chunks = chunks
        self.digester = digester
        self.size = size
        self._lock = threading.Lock()
        self.data_path = directory / f"{blob_id}.blob.data"
        self.map_path = directory / f"{blob_id}.chunk_map"
        self._data = os.open(self.data_path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self._data).st_size != size:
            os.ftruncate(self._data, size)
        self._map = os.open(self.map_path, os.O_RDWR | os.O_CREAT, 0o644)
        map_bytes = (len(chunks) + 7) // 8
        self.bitmap = bytearray(os.pread(self._map, map_bytes, 0).ljust(map_bytes, b"\0"))
        self._checked: set[int] = set()

    def close(self) -> None:
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

    def store(self, index: int, data: bytes) -> None:
        chunk = self.chunks[index]
        written = os.pwrite(self._data, data, chunk.uncompressed_offset)
        if written != len(data):
            raise OSError(f"short write to {self.data_path}")
        with self._lock:  # the bit goes to disk after the bytes it vouches for
            self._checked.add(index)
            self.bitmap[index >> 3] |= 1 << (index & 7)
            os.pwrite(self._map, bytes([self.bitmap[index >> 3]]), index >> 3)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._data, size, offset)
