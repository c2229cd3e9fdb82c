"""The FUSE side of a lazy mount: each blob's uncompressed space as a read-only file.

The kernel's EROFS reads these files (through loop devices) as the image's extra devices;
every read lands in :class:`LazyBlob`, which fetches only the chunks it covers.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import stat
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from damselfly.nydus.cache import CacheQuota, ChunkCache
from damselfly.nydus.lazy import FETCH_DEADLINE, ChunkUnavailable, FetchStats, LazyBlob
from damselfly.nydus.rafs import Bootstrap
from damselfly.registry.blocking import RegistryClient


def _name_libfuse3() -> None:
    """Point mfusepy at libfuse 3 by its soname when the loader has it. Left to itself,
    mfusepy looks for libfuse 2 first with ctypes.util.find_library, which on a host
    without it runs ldconfig, gcc and ld: about 15 ms of every mount, before it settles
    on this same library."""
    if "FUSE_LIBRARY_PATH" not in os.environ:
        try:
            ctypes.CDLL("libfuse3.so.3")
        except OSError:
            return  # let mfusepy search, and say what it found or did not
        os.environ["FUSE_LIBRARY_PATH"] = "libfuse3.so.3"


_name_libfuse3()
import mfusepy as fuse  # noqa: E402 - after its library is named

log = logging.getLogger("damselfly.nydus.blobfs")

READAHEAD_THREADS = 2  # fetches ahead of readers at once, for the whole mount
READAHEAD_GRACE = 5.0  # seconds queued readaheads may still start once the mount is gone


class BlobFilesystem(fuse.Operations):
    """A flat, read-only directory: one file per blob, named by blob id."""

    def __init__(self, blobs: dict[str, LazyBlob], on_ready: Callable[[], None]) -> None:
        self.blobs = blobs
        self.on_ready = on_ready

    def init(self, path: str) -> None:
        self.on_ready()

    def _blob(self, path: str) -> LazyBlob:
        blob = self.blobs.get(path.lstrip("/"))
        if blob is None:
            raise fuse.FuseOSError(errno.ENOENT)
        return blob

    def getattr(self, path: str, fh: int | None = None) -> dict:
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
        return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": self._blob(path).size}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *self.blobs]

    def open(self, path: str, flags: int) -> int:
        self._blob(path)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise fuse.FuseOSError(errno.EROFS)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        blob = self._blob(path)
        try:
            return blob.read(offset, size)
        except ChunkUnavailable as error:
            log.error("read of %d bytes at %d in blob %s failed: %s", size, offset, blob.entry.blob_id[:12], error)
            raise fuse.FuseOSError(errno.EIO) from None


def open_blobs(bootstrap: Bootstrap, cache_dir: Path, quota: CacheQuota, client: RegistryClient, repository: str,
               stats: FetchStats, readahead: Executor) -> dict[str, LazyBlob]:
    blobs = {}
    for entry in bootstrap.blobs:
        chunks = bootstrap.blob_chunks(entry.blob_index)
        size = bootstrap.device_size(entry.blob_index)
        cache = ChunkCache(cache_dir, entry.blob_id, size, chunks, entry.digester, quota)
        blobs[entry.blob_id] = LazyBlob(entry, chunks, size, cache, client, repository, stats, readahead=readahead)
    return blobs


def serve(bootstrap: Bootstrap, fuse_dir: Path, cache_dir: Path, cache_quota: int, client: RegistryClient,
          repository: str, stats_path: Path, prefetch: bool, on_ready: Callable[[], None]) -> None:
    """Run the FUSE server until it is unmounted; stats are written to ``stats_path`` as JSON."""
    stats = FetchStats()
    readahead = ThreadPoolExecutor(max_workers=READAHEAD_THREADS, thread_name_prefix="readahead")
    quota = CacheQuota(cache_quota)
    blobs = open_blobs(bootstrap, cache_dir, quota, client, repository, stats, readahead)
    stopping = threading.Event()
    image_bytes = sum(entry.compressed_size for entry in bootstrap.blobs)

    written: dict[str, int] = {}

    def write_stats() -> None:
        """The stats file, rewritten only when a count moved (an idle mount writes nothing)."""
        counts = stats.as_dict()
        if counts == written:
            return
        written.clear()
        written.update(counts)
        report = {**counts, "image_bytes": image_bytes, "chunks": sum(len(b.chunks) for b in blobs.values()),
                  "cached_chunks": sum(blob.cache.cached_count() for blob in blobs.values()),
                  "cached_bytes": quota.used, "cache_quota": quota.limit, "evicted_chunks": quota.evicted}
        temporary = stats_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(report))
        temporary.replace(stats_path)

    def report() -> None:
        while not stopping.wait(0.25):
            write_stats()

    prefetchers: list[threading.Thread] = []

    def ready() -> None:
        threading.Thread(target=report, name="stats", daemon=True).start()
        if prefetch:
            for blob in blobs.values():
                prefetchers.append(threading.Thread(target=blob.prefetch, args=(stopping,), daemon=True,
                                                    name=f"prefetch-{blob.entry.blob_id[:8]}"))
                prefetchers[-1].start()
        on_ready()

    fuse_dir.mkdir(parents=True, exist_ok=True)
    try:
        fuse.FUSE(BlobFilesystem(blobs, ready), str(fuse_dir), foreground=True, ro=True, nothreads=False,
                  fsname="damselfly-nydus")
    finally:
        stopping.set()
        for thread in prefetchers:  # a store after close would write to a closed descriptor
            thread.join(timeout=2 * FETCH_DEADLINE)
        # What is queued still goes (a warm chunk cache then holds each read's window), but
        # only for a while: umount kills a server that takes 15 s to exit.
        give_up = time.monotonic() + READAHEAD_GRACE
        for blob in blobs.values():
            blob.read_ahead_until = give_up
        readahead.shutdown(wait=True)
        write_stats()
        for blob in blobs.values():
            blob.close()
        client.close()
