"""Property tests: whatever bytes a bootstrap or data blob holds, reading it fails, if it fails,
with FormatError (the one-line error the commands print), never with anything else."""

from __future__ import annotations

import io
import re
import stat
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from damselfly.nydus.builder import ChunkSettings
from damselfly.nydus.inspect import describe_blob, describe_bootstrap
from damselfly.nydus.layout import (
    EXT_SUPER_OFFSET, SUPER_OFFSET, BlobEntry, BlobMetaHeader, ChunkAddress, ChunkInfoV2, ChunkRecord, Compressor,
    DeviceSlot, FormatError, Inode, SuperBlock, SuperBlockExt, TocEntry,
)
from damselfly.nydus.rafs import Bootstrap, read_toc, rebuild_uncompressed
from damselfly.nydus.tree import Node
from tests.unit.test_nydus_limits import build_image

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nydus"
BOUNDED = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _seed() -> tuple[bytes, bytes]:
    """A small image with each kind of inode the reader handles, and its data blob."""
    others = {
        "dir": Node(mode=stat.S_IFDIR | 0o755, children={"inner": Node(mode=stat.S_IFREG | 0o600)}),
        "link": Node(mode=stat.S_IFLNK | 0o777, target=b"file"),
        "null": Node(mode=stat.S_IFCHR | 0o666, rdev=0x103),
        "tagged": Node(mode=stat.S_IFREG | 0o644, xattrs={"user.k": b"v", "security.capability": b"\1" * 20}),
    }
    data = b"".join(b"%08d" % i for i in range(2560))  # five 4 KiB chunks of distinct, compressible data
    return build_image({"file": data}, others, ChunkSettings(Compressor.LZ4_BLOCK, chunk_size=4096))


BUILT, BUILT_BLOB = _seed()
SEEDS = [BUILT, (FIXTURES / "rafs-v6-2.2.boot").read_bytes(), (FIXTURES / "2fa78cad-inline-image.boot").read_bytes()]
DATA_BLOB = (FIXTURES / "be7d77eeb719f70884758d1aa800ed0fb09d701aaec469964e9d54325f0d5fef").read_bytes()
INLINED_BLOB = (FIXTURES / "2fa78cad554b75ac91a4a125ed148d0ddeb25efa4aaa8bd80e5dc292690a4dca").read_bytes()


def read_everything(data: bytes) -> None:
    """All a mount, an export or `inspect --chunks` reads of a bootstrap."""
    bootstrap = Bootstrap(data)
    for line in describe_bootstrap(bootstrap, show_chunks=True):  # walks the tree and looks every chunk up
        assert isinstance(line, str)
    for blob in bootstrap.blobs:
        bootstrap.blob_chunks(blob.blob_index)
        assert bootstrap.device_size(blob.blob_index) >= 0


def only_format_errors(read, data: bytes) -> None:
    """``read(data)`` succeeds or fails with a one-line FormatError."""
    try:
        read(data)
    except FormatError as error:
        assert str(error) and "\n" not in str(error)


_EDGES = st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFF_FFFF, 1 << 63, 0xFFFF_FFFF_FFFF_FFFF, 4095, 4096,
                          1 << 20])


def _fields(fmt: struct.Struct, base: int) -> list[tuple[int, int]]:
    """(offset, width) of each integer field of a record packed with ``fmt`` at ``base``."""
    spans, at = [], base
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt.format.lstrip("<")):
        width = struct.calcsize("<" + code)
        if code in "sx":
            at += int(count or 1)
            continue
        for _ in range(int(count or 1)):
            spans.append((at, width))
            at += width
    return spans


def record_fields(data: bytes) -> list[tuple[int, int]]:
    """Every integer field of a bootstrap's superblocks, device slots, blob and chunk tables and inodes."""
    bootstrap = Bootstrap(data)
    ext = bootstrap.ext
    spans = _fields(SuperBlock._FMT, SUPER_OFFSET) + _fields(SuperBlockExt._FMT, EXT_SUPER_OFFSET)
    for index in range(len(bootstrap.devices)):
        spans += _fields(DeviceSlot._FMT, bootstrap.superblock.devt_slotoff * DeviceSlot.SIZE + index * DeviceSlot.SIZE)
    for index in range(len(bootstrap.blobs)):
        spans += _fields(BlobEntry._FMT, ext.blob_table_offset + index * BlobEntry.SIZE)
    for index in range(len(bootstrap.chunks)):
        spans += _fields(ChunkRecord._FMT, ext.chunk_table_offset + index * ChunkRecord.SIZE)
    for entry in bootstrap.walk():
        layout = Inode._EXTENDED if entry.inode.extended else Inode._COMPACT
        spans += _fields(layout, bootstrap.inode_offset(entry.nid))
    return spans


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with some record fields set to values at the edges, or some bytes overwritten
    (mostly where it holds something, not in its zero padding); and perhaps cut short."""
    seed, fields, live = draw(st.sampled_from(seeds))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        if fields and draw(st.booleans()):
            at, width = draw(st.sampled_from(fields))
            value = draw(_EDGES) & ((1 << 8 * width) - 1)
            data[at:at + width] = value.to_bytes(width, "little")
        else:
            at = draw(st.sampled_from(live) if draw(st.integers(0, 3)) else st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
    if draw(st.integers(0, 19)) == 0:
        data = data[:draw(st.integers(len(data) // 2, len(data)))]
    return bytes(data)


def seeds(datas: list[bytes], bootstraps: bool = True) -> list[tuple[bytes, list[tuple[int, int]], list[int]]]:
    """Each seed with its record fields (bootstraps only) and the offsets of its non-zero bytes."""
    return [(data, record_fields(data) if bootstraps else [], [at for at, byte in enumerate(data) if byte])
            for data in datas]


BOOTSTRAP_SEEDS = seeds(SEEDS)
BUILT_SEEDS = seeds([BUILT])


@BOUNDED
@given(st.binary(max_size=16384))
def test_arbitrary_bytes_are_no_bootstrap(data: bytes) -> None:
    only_format_errors(read_everything, data)


@BOUNDED
@given(st.binary(min_size=4, max_size=64).map(lambda tail: b"\0" * SUPER_OFFSET + struct.pack("<I", 0xE0F5E1E2)
                                               + tail + b"\0" * 8192))
def test_arbitrary_superblocks_behind_the_magic(data: bytes) -> None:
    only_format_errors(read_everything, data)


@BOUNDED
@given(mutated(BOOTSTRAP_SEEDS))
def test_mutated_bootstraps_fail_only_with_format_errors(data: bytes) -> None:
    only_format_errors(read_everything, data)


class _Sink:
    """An output that keeps nothing: a device may claim terabytes, which a file holds sparsely."""

    def seek(self, offset: int) -> None:
        assert offset >= 0

    def write(self, data: bytes) -> int:
        return len(data)


def _rebuild(blob: bytes, bootstrap: bytes = BUILT) -> None:
    """What `damselfly nydus export` does with a blob."""
    rebuild_uncompressed(Bootstrap(bootstrap), 0, io.BytesIO(blob), _Sink())


@BOUNDED
@given(mutated(seeds([BUILT_BLOB], bootstraps=False)))
def test_a_mutated_data_blob_is_caught_when_its_chunks_are_read(blob: bytes) -> None:
    only_format_errors(_rebuild, blob)


@BOUNDED
@given(mutated(BUILT_SEEDS))
def test_a_mutated_bootstrap_rebuilds_its_blob_or_fails_with_a_format_error(bootstrap: bytes) -> None:
    only_format_errors(lambda data: _rebuild(BUILT_BLOB, data), bootstrap)


@BOUNDED
@given(st.one_of(mutated(seeds([DATA_BLOB, INLINED_BLOB, BUILT_BLOB], bootstraps=False)), st.binary(max_size=4096)))
def test_mutated_data_blobs_are_described_or_refused(blob: bytes) -> None:
    only_format_errors(lambda data: list(describe_blob(data)), blob)


_RECORDS = [SuperBlock.unpack, SuperBlockExt.unpack, BlobMetaHeader.unpack, read_toc,
            *(lambda data, parse=parse: parse(data, 0) for parse in (
                DeviceSlot.unpack, BlobEntry.unpack, ChunkRecord.unpack, ChunkAddress.unpack, ChunkInfoV2.unpack,
                TocEntry.unpack)),
            lambda data: Inode.unpack(data, 0, (0, 0))]


@BOUNDED
@given(st.sampled_from(_RECORDS), st.binary(max_size=1600))
def test_each_record_parser_takes_any_bytes(parse, data: bytes) -> None:
    only_format_errors(parse, data)


def test_the_seeds_read_whole() -> None:
    """The properties above start from images that read without error."""
    for seed in SEEDS:
        read_everything(seed)
    _rebuild(BUILT_BLOB)
    assert {entry.path for entry in Bootstrap(BUILT).walk()} >= {"/dir/inner", "/link", "/null", "/tagged"}
    assert len(list(describe_blob(INLINED_BLOB))) > 5
