"""Reading a blob's uncompressed space on demand: the chunks a read needs, fetched as ranges.

A read asks for the chunks that cover it; those not in the chunk cache are fetched as
compressed ranges (adjacent chunks merged up to ``batch_bytes``) from the blob's URL, which
is normally the local Damselfly daemon, so the request becomes one P2P task per blob.
Every chunk is decompressed and checked against its digest before it is cached or served.
Concurrent reads of the same chunk share one fetch. Each read also fetches, in the
background, the chunks of the same file that follow it, up to ``readahead_bytes``
compressed: a large file (a shared library, an interpreter) is read a chunk at a time, and
each of those reads would otherwise wait a full round trip. A background prefetcher, when
enabled, walks the rest of the blob and yields to demand reads; it stops where the chunk
cache's quota is full, since what it fetched would only evict what readers use.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from damselfly.nydus import codec
from damselfly.nydus.cache import ChunkCache, disk_size
from damselfly.nydus.layout import BlobEntry, ChunkRecord, Compressor, FormatError
from damselfly.registry.blocking import TRANSPORT_ERRORS, RegistryClient, RegistryError, read_body

log = logging.getLogger("damselfly.nydus.lazy")

DEFAULT_BATCH_BYTES = 1 << 20
READAHEAD_BYTES = 1 << 20  # compressed bytes of a file fetched past each read of it
FETCH_DEADLINE = 60.0  # seconds for one range, however slowly its bytes trickle in
_ATTEMPTS = 2


class ChunkUnavailable(IOError):
    """A chunk that could not be fetched or did not match its digest; the read fails with EIO."""


def _until(deadline: float, parts: Iterable[bytes], what: str) -> Iterator[bytes]:
    """``parts`` as long as time.monotonic() is before ``deadline``: a trickle would hold a
    FUSE thread forever."""
    for part in parts:
        if time.monotonic() > deadline:
            raise ChunkUnavailable(f"{what} took over {FETCH_DEADLINE:.0f}s")
        yield part


@dataclass
class FetchStats:
    fetched_bytes: int = 0
    fetched_chunks: int = 0
    requests: int = 0
    demand_chunks: int = 0
    prefetched_chunks: int = 0
    cache_hits: int = 0
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in self.__dict__.items() if k != "lock"}


class LazyBlob:
    """One data blob seen as its uncompressed space, filled chunk by chunk."""

    def __init__(self, entry: BlobEntry, chunks: list[ChunkRecord], size: int, cache: ChunkCache,
                 client: RegistryClient, repository: str, stats: FetchStats,
                 batch_bytes: int = DEFAULT_BATCH_BYTES, readahead: Executor | None = None,
                 readahead_bytes: int = READAHEAD_BYTES) -> None:
        self.entry = entry
        self.chunks = chunks  # sorted by uncompressed offset; index i is bit i of the cache map
        self.size = size
        self.cache = cache
        self.repository = repository
        self.stats = stats
        self.batch_bytes = batch_bytes
        self.readahead = readahead
        self.readahead_bytes = readahead_bytes
        self.read_ahead_until = float("inf")  # time.monotonic() after which queued readaheads are dropped
        self._starts = [c.uncompressed_offset for c in chunks]
        self.client = client  # one pool for every FUSE thread: a client per thread costs an SSL context each
        self._inflight: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._demand = 0
        self._idle = threading.Condition(self._lock)

    @property
    def digest(self) -> str:
        return f"sha256:{self.entry.blob_id}"

    def close(self) -> None:
        self.cache.close()

    def chunks_for(self, offset: int, size: int) -> range:
        """Indexes of the chunks that overlap [offset, offset + size)."""
        first = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        last = bisect.bisect_left(self._starts, offset + size)
        return range(first, last)

    def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        if size == 0:
            return b""
        wanted = self.chunks_for(offset, size)
        with self._lock:
            self._demand += 1
        try:
            with self.cache.in_use(wanted):  # not evicted between their fetch and this read of them
                self.ensure(wanted, demand=True)
                data = self.cache.read(offset, size)
        finally:
            with self._lock:
                self._demand -= 1
                self._idle.notify_all()
        if self.readahead is not None and (ahead := self.ahead_of(wanted[-1])):
            self.readahead.submit(self._read_ahead, ahead)
        return data

    def ahead_of(self, last: int) -> list[int]:
        """The chunks that continue ``last``'s file, at most ``readahead_bytes`` of them (but
        at least the next), that are neither cached nor being fetched: each kernel read of a
        chunk would otherwise queue the same window again. Cached chunks count towards the
        window: it slides with the reader."""
        ahead, window, index = [], 0, last + 1
        while index < len(self.chunks) and self.chunks[index].file_offset > 0:
            window += self.chunks[index].compressed_size
            if window > self.readahead_bytes and index > last + 1:
                break
            if not self.cache.has(index) and index not in self._inflight:  # a hint: _read_ahead claims under the lock
                ahead.append(index)
            index += 1
        return ahead

    def ensure(self, indexes: range | list[int], demand: bool) -> None:
        """Make every chunk in ``indexes`` usable from the cache, fetching what is missing."""
        missing = []
        for index in indexes:
            if self.cache.usable(index):
                if demand:
                    self.stats.add(cache_hits=1)
            else:
                missing.append(index)
        deadline = time.monotonic() + 2 * FETCH_DEADLINE * _ATTEMPTS  # for every wait on other threads' fetches
        for _ in range(2):  # a second pass fetches what another thread's fetch (a readahead's, say) did not bring
            if not missing:
                return
            mine, waits = self._claim(missing)
            try:
                for run in self._runs(mine):
                    self._fetch_run(run, demand)
            finally:
                self._release(mine)
            for event in waits:
                event.wait(timeout=max(0.0, deadline - time.monotonic()))
            missing = [index for index in missing if not self.cache.usable(index)]
        if missing:
            raise ChunkUnavailable(f"chunk {missing[0]} of blob {self.entry.blob_id[:12]} is not available")

    def _claim(self, indexes: list[int]) -> tuple[list[int], list[threading.Event]]:
        """Split ``indexes`` into those this thread now fetches and the fetches it can wait on."""
        mine: list[int] = []
        waits: list[threading.Event] = []
        with self._lock:
            for index in indexes:
                event = self._inflight.get(index)
                if event is None:
                    self._inflight[index] = threading.Event()
                    mine.append(index)
                else:
                    waits.append(event)
        return mine, waits

    def _release(self, indexes: list[int]) -> None:
        with self._lock:
            for index in indexes:
                self._inflight.pop(index).set()

    def _read_ahead(self, indexes: list[int]) -> None:
        """Fetch what nobody fetches yet, a run at a time (a reader of the first run need not
        wait for the others); a failure is left for a demand read to meet."""
        if time.monotonic() > self.read_ahead_until:
            return
        mine, _ = self._claim([index for index in indexes if not self.cache.has(index)])
        runs = self._runs(mine)
        try:
            while runs and time.monotonic() <= self.read_ahead_until:
                run = runs.pop(0)
                try:
                    self._fetch_run(run, demand=False)
                finally:
                    self._release(run)
        except (ChunkUnavailable, OSError) as error:
            log.warning("readahead in blob %s stopped: %s", self.entry.blob_id[:12], error)
        finally:
            self._release([index for run in runs for index in run])

    def _runs(self, indexes: list[int]) -> list[list[int]]:
        """Adjacent chunks (in the compressed blob) grouped into ranges of at most batch_bytes."""
        runs: list[list[int]] = []
        for index in sorted(indexes):
            chunk = self.chunks[index]
            if runs:
                previous = self.chunks[runs[-1][-1]]
                start = self.chunks[runs[-1][0]].compressed_offset
                adjacent = previous.compressed_offset + previous.compressed_size == chunk.compressed_offset
                if adjacent and chunk.compressed_offset + chunk.compressed_size - start <= self.batch_bytes:
                    runs[-1].append(index)
                    continue
            runs.append([index])
        return runs

    def _fetch_run(self, run: list[int], demand: bool) -> None:
        first, last = self.chunks[run[0]], self.chunks[run[-1]]
        start, end = first.compressed_offset, last.compressed_offset + last.compressed_size - 1
        error: Exception | None = None
        for attempt in range(_ATTEMPTS):
            try:
                deadline = time.monotonic() + FETCH_DEADLINE
                with self.client.open_blob(self.repository, self.digest, (start, end)) as response:
                    body = read_body(_until(deadline, response.iter_bytes(), f"range {start}-{end}"),
                                     end - start + 1, f"range {start}-{end}")
                self.stats.add(requests=1, fetched_bytes=len(body))
                if len(body) != end - start + 1:
                    raise ChunkUnavailable(f"range {start}-{end} came back with {len(body)} bytes")
                for index in run:
                    chunk = self.chunks[index]
                    raw = body[chunk.compressed_offset - start:chunk.compressed_offset - start + chunk.compressed_size]
                    compressor = self.entry.compressor if chunk.compressed else Compressor.NONE
                    data = codec.decompress(compressor, raw, chunk.uncompressed_size)
                    if codec.chunk_digest(self.entry.digester, data) != chunk.digest:
                        raise ChunkUnavailable(f"chunk {index} does not match its digest")
                    self.cache.store(index, data)
                self.stats.add(fetched_chunks=len(run), **({"demand_chunks": len(run)} if demand
                                                           else {"prefetched_chunks": len(run)}))
                return
            except (RegistryError, ChunkUnavailable, FormatError, *TRANSPORT_ERRORS) as failure:
                error = failure
                log.warning("blob %s bytes %d-%d, attempt %d: %s", self.entry.blob_id[:12], start, end,
                            attempt + 1, failure)
        self.stats.add(failures=1)
        raise ChunkUnavailable(f"blob {self.entry.blob_id[:12]} bytes {start}-{end}: {error}")

    def prefetch(self, stopping: threading.Event) -> None:
        """Fetch the rest of the blob in batches, pausing while demand reads are in flight and
        stopping when the rest would not fit the quota (a prefetch never evicts)."""
        pending = [i for i in range(len(self.chunks)) if not self.cache.has(i)]
        for run in self._runs(pending):
            with self._lock:
                while self._demand and not stopping.is_set():
                    self._idle.wait(timeout=0.5)
            if stopping.is_set():
                return
            if not self.cache.quota.fits(sum(disk_size(self.chunks[index]) for index in run)):
                log.info("prefetch of blob %s stopped: the chunk cache quota is full", self.entry.blob_id[:12])
                return
            try:
                self.ensure(run, demand=False)
            except ChunkUnavailable as error:
                log.warning("prefetch of blob %s stopped: %s", self.entry.blob_id[:12], error)
                return
        log.info("blob %s fully cached (%d chunks)", self.entry.blob_id[:12], len(self.chunks))

