"""Which chunks a read needs, how fetches are merged, and the chunk cache's bitmap and self-check."""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly.nydus import codec
from damselfly.nydus.cache import ChunkCache
from damselfly.nydus.layout import BlobEntry, ChunkRecord, Compressor, Digester, FormatError, pack_xattr
from damselfly.nydus.lazy import FetchStats, LazyBlob

KiB = 1024


def _chunks(sizes: list[int]) -> tuple[list[ChunkRecord], list[bytes]]:
    """Chunks laid out as the builder does: compressed back to back, uncompressed 4 KiB aligned."""
    records, datas, compressed_at, uncompressed_at = [], [], 0, 0
    for index, size in enumerate(sizes):
        data = bytes([index + 1]) * size
        records.append(ChunkRecord(codec.chunk_digest(Digester.SHA256, data), 0, 0, size, size, compressed_at,
                                   uncompressed_at, 0, index))
        datas.append(data)
        compressed_at += size
        uncompressed_at += -(-size // 4096) * 4096
    return records, datas


def _blob(tmp_path: Path, sizes: list[int], batch: int = 64 * KiB) -> LazyBlob:
    records, _ = _chunks(sizes)
    size = records[-1].uncompressed_offset + -(-records[-1].uncompressed_size // 4096) * 4096
    entry = BlobEntry("a" * 64, 0, 64 * KiB, len(records), Compressor.NONE, Digester.SHA256, 0, 0, size)
    cache = ChunkCache(tmp_path, entry.blob_id, size, records, Digester.SHA256)
    return LazyBlob(entry, records, size, cache, client=None, repository="r",  # type: ignore[arg-type]
                    stats=FetchStats(), batch_bytes=batch)


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


def test_chunk_cache_keeps_its_map_across_opens_and_drops_a_rotten_chunk(tmp_path: Path) -> None:
    records, datas = _chunks([8 * KiB, 8 * KiB])
    cache = ChunkCache(tmp_path, "b" * 64, 16 * KiB, records, Digester.SHA256)
    cache.store(0, datas[0])
    cache.store(1, datas[1])
    cache.close()
    with open(tmp_path / ("b" * 64 + ".blob.data"), "r+b") as file:
        file.seek(8 * KiB)
        file.write(b"rot")
    reopened = ChunkCache(tmp_path, "b" * 64, 16 * KiB, records, Digester.SHA256)
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
