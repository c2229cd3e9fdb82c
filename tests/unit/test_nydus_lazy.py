"""Which chunks a read needs, how fetches are merged, and the chunk cache's bitmap and self-check."""

from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

from damselfly.nydus import codec
from damselfly.nydus.cache import CacheQuota, ChunkCache
from damselfly.nydus.layout import BlobEntry, ChunkRecord, Compressor, Digester, FormatError, pack_xattr
from damselfly.nydus.lazy import ChunkUnavailable, FetchStats, LazyBlob
from damselfly.registry.blocking import RegistryError
from testkit.wait import wait_until

KiB = 1024


def _chunks(sizes: list[int], file_offsets: list[int] | None = None) -> tuple[list[ChunkRecord], list[bytes]]:
    """Chunks laid out as the builder does: compressed back to back, uncompressed 4 KiB aligned.
    Each chunk starts a file unless ``file_offsets`` says where in its file it sits."""
    records, datas, compressed_at, uncompressed_at = [], [], 0, 0
    for index, size in enumerate(sizes):
        data = bytes([index + 1]) * size
        file_offset = file_offsets[index] if file_offsets else 0
        records.append(ChunkRecord(codec.chunk_digest(Digester.SHA256, data), 0, 0, size, size, compressed_at,
                                   uncompressed_at, file_offset, index))
        datas.append(data)
        compressed_at += size
        uncompressed_at += -(-size // 4096) * 4096
    return records, datas


class FakeRegistryClient:
    """Serves ranges of an uncompressed blob from memory and counts them, as the mirror would."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.ranges: list[tuple[int, int]] = []

    @contextmanager
    def open_blob(self, repository: str, digest: str, byte_range: tuple[int, int]) -> Iterator[SimpleNamespace]:
        self.ranges.append(byte_range)
        body = self.blob[byte_range[0]:byte_range[1] + 1]
        yield SimpleNamespace(iter_bytes=lambda: iter([body]))


def _blob(tmp_path: Path, sizes: list[int], batch: int = 64 * KiB, file_offsets: list[int] | None = None,
          readahead: Executor | None = None, readahead_bytes: int = 64 * KiB, quota: int = 1 << 30) -> LazyBlob:
    records, datas = _chunks(sizes, file_offsets)
    size = records[-1].uncompressed_offset + -(-records[-1].uncompressed_size // 4096) * 4096
    entry = BlobEntry("a" * 64, 0, 64 * KiB, len(records), Compressor.NONE, Digester.SHA256, 0, 0, size)
    cache = ChunkCache(tmp_path, entry.blob_id, size, records, Digester.SHA256, CacheQuota(quota))
    client = FakeRegistryClient(b"".join(datas))
    return LazyBlob(entry, records, size, cache, client=client, repository="r",  # type: ignore[arg-type]
                    stats=FetchStats(), batch_bytes=batch, readahead=readahead, readahead_bytes=readahead_bytes)


def test_a_read_needs_exactly_the_chunks_it_overlaps(tmp_path: Path) -> None:
    blob = _blob(tmp_path, [10 * KiB, 5 * KiB, 20 * KiB])  # uncompressed at 0, 12 KiB, 20 KiB
    assert list(blob.chunks_for(0, 1)) == [0]
    assert list(blob.chunks_for(12 * KiB - 1, 2)) == [0, 1]
    assert list(blob.chunks_for(19 * KiB, 30 * KiB)) == [1, 2]
    assert list(blob.chunks_for(21 * KiB, 1)) == [2]


def test_fetches_merge_adjacent_chunks_up_to_the_batch_size(tmp_path: Path) -> None:
    blob = _blob(tmp_path, [30 * KiB, 30 * KiB, 30 * KiB, 10 * KiB], batch=64 * KiB)
    assert blob._runs([0, 1, 2, 3]) == [[0, 1], [2, 3]]
    assert blob._runs([0, 2]) == [[0], [2]]  # not adjacent: two ranges


def test_readahead_takes_the_rest_of_the_file_within_its_budget(tmp_path: Path) -> None:
    # a file of four 30 KiB chunks, then a one-chunk file; the window is 64 KiB
    blob = _blob(tmp_path, [30 * KiB] * 5, file_offsets=[0, 30 * KiB, 60 * KiB, 90 * KiB, 0])
    assert blob.ahead_of(0) == [1, 2]  # chunk 3 would take the window past 64 KiB
    assert blob.ahead_of(2) == [3]  # the next file is not read ahead
    assert blob.ahead_of(3) == [] and blob.ahead_of(4) == []
    blob.cache.store(1, bytes([2]) * 30 * KiB)
    assert blob.ahead_of(0) == [2]  # a cached chunk still counts: the window slides with the reader
    blob._claim([2])
    assert blob.ahead_of(0) == []  # one being fetched is not queued again
    blob._release([2])
    blob.readahead_bytes = 10 * KiB
    assert blob.ahead_of(1) == [2] and blob.ahead_of(0) == []  # at least the next chunk, cached or not


def test_a_read_fetches_what_follows_in_its_file_in_the_background(tmp_path: Path) -> None:
    readahead = ThreadPoolExecutor(max_workers=1)
    blob = _blob(tmp_path, [30 * KiB] * 5, file_offsets=[0, 30 * KiB, 60 * KiB, 90 * KiB, 0],
                 readahead=readahead, readahead_bytes=64 * KiB)
    assert blob.read(0, 100) == bytes([1]) * 100
    readahead.submit(lambda: None).result(timeout=10)  # one worker: what was queued before is done
    assert [blob.cache.has(index) for index in range(5)] == [True, True, True, False, False]
    assert blob.client.ranges == [(0, 30 * KiB - 1), (30 * KiB, 90 * KiB - 1)]  # one range ahead, merged
    assert blob.read(32 * KiB, 30 * KiB) == bytes([2]) * 30 * KiB  # served from what was read ahead...
    readahead.shutdown(wait=True)
    assert blob.client.ranges[2:] == [(90 * KiB, 120 * KiB - 1)]  # ...which moved the window on
    stats = blob.stats.as_dict()
    assert (stats["demand_chunks"], stats["prefetched_chunks"], stats["cache_hits"]) == (1, 3, 1)


class FlakyRegistryClient(FakeRegistryClient):
    """Fails the ranges that start at ``fail_at`` twice (a fetch's two attempts), the first
    failure only once ``gate`` is set, so that a reader can come to wait on that fetch."""

    def __init__(self, blob: bytes, fail_at: int) -> None:
        super().__init__(blob)
        self.fail_at = fail_at
        self.failures_left = 2
        self.failing = threading.Event()
        self.gate = threading.Event()

    @contextmanager
    def open_blob(self, repository: str, digest: str, byte_range: tuple[int, int]) -> Iterator[SimpleNamespace]:
        if byte_range[0] == self.fail_at and self.failures_left:
            self.ranges.append(byte_range)
            self.failures_left -= 1
            self.failing.set()
            self.gate.wait(timeout=10)
            raise RegistryError("the registry failed")
        with super().open_blob(repository, digest, byte_range) as response:
            yield response


def test_readahead_queued_past_its_time_is_dropped(tmp_path: Path) -> None:
    readahead = ThreadPoolExecutor(max_workers=1)
    blob = _blob(tmp_path, [30 * KiB, 30 * KiB], file_offsets=[0, 30 * KiB], readahead=readahead)
    blob.read_ahead_until = 0.0  # as an unmounted FUSE server sets it, a grace period later
    assert blob.read(0, 100) == bytes([1]) * 100
    readahead.shutdown(wait=True)
    assert blob.client.ranges == [(0, 30 * KiB - 1)] and not blob.cache.has(1)


def test_a_reader_waiting_on_a_failed_readahead_fetches_the_chunk_itself(tmp_path: Path) -> None:
    readahead = ThreadPoolExecutor(max_workers=1)
    blob = _blob(tmp_path, [30 * KiB, 30 * KiB], file_offsets=[0, 30 * KiB], readahead=readahead)
    blob.client = FlakyRegistryClient(blob.client.blob, fail_at=30 * KiB)
    assert blob.read(0, 100) == bytes([1]) * 100  # and chunk 1 is read ahead: that fetch now hangs, then fails
    assert blob.client.failing.wait(timeout=10)
    reader = ThreadPoolExecutor(max_workers=1).submit(blob.read, 32 * KiB, 100)
    wait_until(lambda: blob._demand == 1, 10, "the reader to wait on the readahead's fetch")
    blob.client.gate.set()
    assert reader.result(timeout=10) == bytes([2]) * 100
    readahead.shutdown(wait=True)
    assert blob.client.ranges.count((30 * KiB, 60 * KiB - 1)) == 3  # two failed attempts, then the reader's
    assert blob.stats.as_dict()["failures"] == 1


def test_chunk_cache_keeps_its_map_across_opens_and_drops_a_rotten_chunk(tmp_path: Path) -> None:
    records, datas = _chunks([8 * KiB, 8 * KiB])
    cache = ChunkCache(tmp_path, "b" * 64, 16 * KiB, records, Digester.SHA256, CacheQuota(1 << 30))
    cache.store(0, datas[0])
    cache.store(1, datas[1])
    cache.close()
    with open(tmp_path / ("b" * 64 + ".blob.data"), "r+b") as file:
        file.seek(8 * KiB)
        file.write(b"rot")
    reopened = ChunkCache(tmp_path, "b" * 64, 16 * KiB, records, Digester.SHA256, CacheQuota(1 << 30))
    assert reopened.has(0) and reopened.has(1)
    assert reopened.usable(0)
    assert not reopened.usable(1)  # a reader will fetch it again rather than trust the map
    reopened.store(1, datas[1])
    assert reopened.usable(1) and reopened.read(8 * KiB, 8 * KiB) == datas[1]
    assert reopened.read(0, 8 * KiB) == datas[0]
    reopened.close()


def test_xattrs_erofs_cannot_name_are_refused_clearly() -> None:
    assert len(pack_xattr("user.a", b"v")) % 4 == 0
    with pytest.raises(FormatError, match="EROFS stores only"):
        pack_xattr("system.nfs4_acl", b"x")


# --- range bodies ---------------------------------------------------------------------------------------------

class OverflowingRegistryClient(FakeRegistryClient):
    """Answers a range with what was asked, then endless more; or, ``short``, with one byte too few."""

    def __init__(self, blob: bytes, short: bool = False) -> None:
        super().__init__(blob)
        self.short = short

    @contextmanager
    def open_blob(self, repository: str, digest: str, byte_range: tuple[int, int]) -> Iterator[SimpleNamespace]:
        self.ranges.append(byte_range)
        body = self.blob[byte_range[0]:byte_range[1] + 1]
        parts = iter([body[:-1]]) if self.short else itertools.chain([body], itertools.repeat(b"x" * 4096))
        yield SimpleNamespace(iter_bytes=lambda: parts)


@pytest.mark.parametrize("short, message", [(False, "more than the 8192 bytes expected"),
                                            (True, "came back with 8191 bytes")])
def test_a_range_body_of_the_wrong_length_fails_the_read(tmp_path: Path, short: bool, message: str) -> None:
    blob = _blob(tmp_path, [8 * KiB])
    blob.client = OverflowingRegistryClient(blob.client.blob, short)
    with pytest.raises(ChunkUnavailable, match=message):
        blob.read(0, 100)  # an endless body is cut off at once: this returns
    assert not blob.cache.has(0) and blob.stats.as_dict()["failures"] == 1


# --- the cache quota ------------------------------------------------------------------------------------------

def _allocated(cache: ChunkCache) -> int:
    return os.stat(cache.data_path).st_blocks * 512


def test_the_quota_evicts_the_least_recently_used_chunks_and_they_come_back(tmp_path: Path) -> None:
    blob = _blob(tmp_path, [8 * KiB] * 6, quota=24 * KiB)  # room for three chunks
    quota = blob.cache.quota
    for index in range(4):
        assert blob.read(index * 8 * KiB, 8 * KiB) == bytes([index + 1]) * 8 * KiB
        assert quota.used <= quota.limit and _allocated(blob.cache) <= quota.limit
    assert [blob.cache.has(i) for i in range(4)] == [False, True, True, True] and quota.evicted == 1
    assert blob.read(8 * KiB, 1) == b"\2"  # a hit: chunk 1 is now the most recently used
    blob.read(4 * 8 * KiB, 1)
    assert [blob.cache.has(i) for i in range(5)] == [False, True, False, True, True]
    assert blob.read(0, 8 * KiB) == bytes([1]) * 8 * KiB  # evicted, fetched again, whole
    assert blob.client.ranges.count((0, 8 * KiB - 1)) == 2
    assert quota.used == 24 * KiB and quota.evicted == 3 and _allocated(blob.cache) <= quota.limit


def test_a_read_larger_than_the_quota_is_served_whole_then_trimmed(tmp_path: Path) -> None:
    blob = _blob(tmp_path, [8 * KiB] * 4, quota=8 * KiB)
    assert blob.read(0, 32 * KiB) == b"".join(bytes([i + 1]) * 8 * KiB for i in range(4))  # none evicted under it
    assert blob.cache.quota.used == 8 * KiB and blob.cache.cached_count() == 1


def test_eviction_reaches_the_map_on_disk_and_a_smaller_quota_trims_at_open(tmp_path: Path) -> None:
    records, datas = _chunks([8 * KiB] * 4)
    cache = ChunkCache(tmp_path, "c" * 64, 32 * KiB, records, Digester.SHA256, CacheQuota(24 * KiB))
    for index, data in enumerate(datas):
        cache.store(index, data)
    cache.close()
    reopened = ChunkCache(tmp_path, "c" * 64, 32 * KiB, records, Digester.SHA256, CacheQuota(8 * KiB))
    assert [reopened.has(i) for i in range(4)] == [False, False, False, True]  # chunk 0 went first, then 1 and 2
    assert reopened.usable(3) and reopened.read(24 * KiB, 8 * KiB) == datas[3]
    assert _allocated(reopened) <= 8 * KiB
    reopened.close()


def test_prefetch_fills_the_quota_and_evicts_nothing(tmp_path: Path) -> None:
    blob = _blob(tmp_path, [8 * KiB] * 6, batch=8 * KiB, quota=24 * KiB)
    blob.prefetch(threading.Event())
    assert blob.cache.cached_count() == 3 and blob.cache.quota.evicted == 0


def test_a_blob_another_mount_caches_gets_a_private_cache(tmp_path: Path) -> None:
    records, datas = _chunks([8 * KiB] * 2)
    first = ChunkCache(tmp_path, "d" * 64, 16 * KiB, records, Digester.SHA256, CacheQuota(1 << 20))
    second = ChunkCache(tmp_path, "d" * 64, 16 * KiB, records, Digester.SHA256, CacheQuota(8 * KiB))
    first.store(0, datas[0])
    second.store(1, datas[1])
    second.store(0, datas[0])  # evicts the second's chunk 1, never the first's bytes
    assert first.usable(0) and not first.has(1) and second.has(0) and not second.has(1)
    second.close()
    first.close()
    again = ChunkCache(tmp_path, "d" * 64, 16 * KiB, records, Digester.SHA256, CacheQuota(1 << 20))
    assert [again.has(0), again.has(1)] == [True, False]  # what the first kept, nothing of the second's
    again.close()
