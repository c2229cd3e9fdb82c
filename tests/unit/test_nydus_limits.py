"""Limits on what a nydus image may make us allocate or read: chunk sizes, decompression,
bootstrap size and registry bodies (each was an attack: a small input, a large allocation)."""

from __future__ import annotations

import dataclasses
import gzip
import io
import itertools
import stat
import tarfile
import tracemalloc
from pathlib import Path
from typing import Iterator

import pytest
import zstandard
from click.testing import CliRunner

from damselfly.nydus import codec, image, layout
from damselfly.nydus.builder import BlobWriter, ChunkSettings, build_bootstrap
from damselfly.nydus.cli import nydus
from damselfly.nydus.image import bootstrap_layer, extract_bootstrap
from damselfly.nydus.layout import BlobEntry, ChunkRecord, Compressor, FormatError, SuperBlockExt
from damselfly.nydus.rafs import Bootstrap
from damselfly.nydus.tree import Node, new_root
from damselfly.registry.blocking import RegistryError, read_body

KiB, MiB = 1024, 1024 * 1024
CHUNK_SIZE = 16 * KiB


def build_image(files: dict[str, bytes], others: dict[str, Node] | None = None,
                settings: ChunkSettings | None = None) -> tuple[bytes, bytes]:
    """A bootstrap and its one data blob: ``files`` (and ``others``, nodes without data) at the root."""
    settings = settings or ChunkSettings(chunk_size=CHUNK_SIZE)
    root, out = new_root(), io.BytesIO()
    writer = BlobWriter(out, 0, settings, {})
    for name, data in files.items():
        node = Node(mode=stat.S_IFREG | 0o644, size=len(data))
        writer.add_file(node, io.BytesIO(data))
        root.children[name] = node
    root.children.update(others or {})
    entry = writer.finish()
    return build_bootstrap(root, [entry], settings, writer.records), out.getvalue()


def with_chunk(bootstrap: bytes, index: int, **changes: int) -> bytes:
    """The bootstrap with chunk record ``index`` changed as ``changes`` say."""
    at = SuperBlockExt.unpack(bootstrap).chunk_table_offset + index * ChunkRecord.SIZE
    record = dataclasses.replace(ChunkRecord.unpack(bootstrap, at), **changes)
    return bootstrap[:at] + record.pack() + bootstrap[at + ChunkRecord.SIZE:]


# --- chunk sizes --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built() -> bytes:
    data = b"".join(b"%08d" % i for i in range(6400))  # four distinct 16 KiB chunks (the last short), compressed
    bootstrap, _blob = build_image({"file": data})
    assert [c.compressed for c in Bootstrap(bootstrap).chunks] == [True] * 4
    return bootstrap


@pytest.mark.parametrize("changes, message", [
    ({"uncompressed_size": 0xFFFF_FFFF}, "4294967295 bytes uncompressed; the image's chunk size is 16384"),
    ({"uncompressed_size": CHUNK_SIZE + 1}, "the image's chunk size is 16384"),
    ({"uncompressed_size": 0}, "claims 0 bytes uncompressed"),
    ({"compressed_size": 0xFFFF_FFFF}, "more than a 16384-byte chunk can take"),
    ({"flags": 0}, "stored uncompressed yet claims"),
    ({"uncompressed_offset": 1 << 40}, "ends past its blob's 53248 bytes of uncompressed space"),
    ({"compressed_offset": 1 << 63}, "ends past the end of its"),
])
def test_a_chunk_record_that_claims_too_much_is_refused_when_the_bootstrap_is_read(
        built: bytes, changes: dict[str, int], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        Bootstrap(with_chunk(built, 1, **changes))


def test_a_blob_table_entry_must_name_its_own_place(built: bytes) -> None:
    at = SuperBlockExt.unpack(built).blob_table_offset
    entry = dataclasses.replace(BlobEntry.unpack(built, at), blob_index=1)
    with pytest.raises(FormatError, match="blob table entry 0 calls itself blob 1"):  # was an IndexError
        Bootstrap(built[:at] + entry.pack() + built[at + BlobEntry.SIZE:])


def test_chunks_of_exactly_the_chunk_size_are_read(built: bytes) -> None:
    assert [c.uncompressed_size for c in Bootstrap(built).chunks] == [CHUNK_SIZE] * 3 + [51200 - 3 * CHUNK_SIZE]


def _peak_while(action) -> int:
    """Bytes allocated at the peak of ``action`` (which may raise), above what was allocated before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with pytest.raises(FormatError):
            action()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_a_zstd_frame_that_inflates_past_its_declared_size_never_allocates_more() -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 * MiB))  # its header says 64 MiB
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (64 * MiB))
    assert len(bomb) < 4 * KiB
    for frame in (bomb, unsized):
        peak = _peak_while(lambda frame=frame: codec.decompress(Compressor.ZSTD, frame, 64 * KiB))
        assert peak < 2 * MiB, f"decompressing a 64 KiB chunk allocated {peak} bytes"
    with pytest.raises(FormatError, match="more than the 65536 bytes it claims"):
        codec.decompress(Compressor.ZSTD, bomb, 64 * KiB)


def test_chunks_decompress_to_exactly_their_size_or_fail() -> None:
    data = bytes(range(256)) * 4096
    for compressor in (Compressor.ZSTD, Compressor.LZ4_BLOCK):
        packed = codec.compress(compressor, data)
        assert codec.decompress(compressor, packed, len(data)) == data
        with pytest.raises(FormatError):
            codec.decompress(compressor, packed, len(data) - 1)
        with pytest.raises(FormatError):
            codec.decompress(compressor, packed[:len(packed) // 2], len(data))


# --- bootstrap size -----------------------------------------------------------------------------------------

@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    """A bootstrap limit of 64 KiB, so that going over it costs the test nothing."""
    monkeypatch.setattr(layout, "MAX_BOOTSTRAP_SIZE", 64 * KiB)
    monkeypatch.setattr("damselfly.nydus.rafs.MAX_BOOTSTRAP_SIZE", 64 * KiB)
    monkeypatch.setattr(image, "MAX_BOOTSTRAP_LAYER", 64 * KiB + 16 * KiB)
    return 64 * KiB


def test_a_bootstrap_file_is_read_no_further_than_the_limit(small_limit: int) -> None:
    with pytest.raises(FormatError, match="over the limit of 64.0 KiB"):
        Bootstrap.load("/dev/zero")  # endless: read whole, this would never return


def _layer(members: list[tuple[str, int]]) -> bytes:
    """A gzip tar of zero-filled members (name, size), compressed to almost nothing."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        for name, size in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return gzip.compress(plain.getvalue())


def test_a_bootstrap_layer_is_unpacked_no_further_than_the_limit(small_limit: int) -> None:
    with pytest.raises(FormatError, match="over the limit"):
        extract_bootstrap(_layer([("image/image.boot", small_limit + 1)]))
    with pytest.raises(RegistryError, match="unpacks to more than"):  # skipping a large member costs too
        extract_bootstrap(_layer([("padding", 4 * small_limit), ("image/image.boot", 4096)]))
    assert extract_bootstrap(_layer([("./image/image.boot", small_limit)])) == bytes(small_limit)


def test_a_bootstrap_layer_that_is_no_tar_fails_in_one_line(built: bytes) -> None:
    layer, _diff_id = bootstrap_layer(built)
    assert extract_bootstrap(layer) == built
    for broken in (layer[:len(layer) // 2], b"\x1f\x8b" + bytes(100), b"plain junk" * 100):
        with pytest.raises(RegistryError, match="not a readable tar") as failure:
            extract_bootstrap(broken)
        assert "\n" not in str(failure.value)
    with pytest.raises(RegistryError, match="holds no image/image.boot"):
        extract_bootstrap(_layer([("other", 10)]))


# --- registry bodies ----------------------------------------------------------------------------------------

def _counted(parts: Iterator[bytes], taken: list[int]) -> Iterator[bytes]:
    for part in parts:
        taken[0] += 1
        yield part


def test_a_body_is_refused_as_soon_as_it_runs_past_what_was_asked() -> None:
    taken = [0]
    endless = _counted(itertools.repeat(b"x" * 1000), taken)
    with pytest.raises(RegistryError, match="more than the 2500 bytes expected"):
        read_body(endless, 2500, "range 0-2499")
    assert taken[0] == 3, "the third part took it past the limit; nothing after it was read"
    assert read_body(iter([b"ab", b"c"]), 3, "x") == b"abc"


def test_a_bootstrap_layer_nydus_made_unpacks() -> None:
    fixture = Path(__file__).parent.parent / "fixtures" / "nydus" / "v6-bootstrap-chunk-pos-438272.tar.gz"
    assert len(Bootstrap(extract_bootstrap(fixture.read_bytes())).chunks) == 2515


def test_the_mount_command_refuses_a_quota_it_cannot_use() -> None:
    for value, message in (("lots", "invalid size 'lots'"), ("0", "cache quota '0' must be at least one byte")):
        result = CliRunner().invoke(nydus, ["mount", "--cache-quota", value, "r/x:1", "/mnt"])
        assert result.exit_code == 2 and message in result.output, result.output
