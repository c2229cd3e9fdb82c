"""On-disk records of RAFS v6 (an EROFS image with nydus's extensions) and of nydus data blobs.

Pure packing and unpacking, little-endian throughout; the reader and the builder are built
on these. Sizes and field orders follow the published format (see docs/REFERENCE.md).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from damselfly.lib.units import format_size

BLOCK_SIZE = 4096
BLOCK_BITS = 12
SUPER_OFFSET = 1024
EXT_SUPER_OFFSET = 1152
DEVICE_TABLE_OFFSET = 1408
INODE_SLOT = 32
NULL_ADDR = 0xFFFFFFFF

EROFS_MAGIC = 0xE0F5E1E2
RAFS_V5_MAGIC = 0x52414653
FEATURE_COMPAT_RAFS_V6 = 0x40000000
FEATURE_INCOMPAT_CHUNKED_FILE = 0x4
FEATURE_INCOMPAT_DEVICE_TABLE = 0x8

CHUNK_FORMAT_INDEXES = 0x20
CHUNK_FORMAT_BLKBITS_MASK = 0x1F
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = 16 << 20
DEFAULT_CHUNK_SIZE = 1 << 20
# The whole bootstrap is held in memory by the mount and its FUSE server. Inodes, names and
# chunk records take some 100-200 bytes a file and 80 a chunk, so this holds images of over
# a million files; a layer that claims more is refused before it is read, not after.
MAX_BOOTSTRAP_SIZE = 256 << 20


def valid_chunk_size(size: int) -> bool:
    """A power of two from 4 KiB to 16 MiB, as nydus allows."""
    return size & (size - 1) == 0 and MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE


def check_bootstrap_size(size: int) -> None:
    """Refuse a bootstrap over the limit before it is read or unpacked, not after."""
    if size > MAX_BOOTSTRAP_SIZE:
        raise FormatError(f"the bootstrap ({size} bytes or more) is over the limit of "
                          f"{format_size(MAX_BOOTSTRAP_SIZE)}")


def max_compressed_size(chunk_size: int) -> int:
    """The most a chunk of ``chunk_size`` bytes can take compressed: incompressible input grows
    by under 1/255 plus a header with LZ4 and zstd (LZ4_COMPRESSBOUND, ZSTD_COMPRESSBOUND)."""
    return chunk_size + chunk_size // 255 + 128


class Layout(IntEnum):
    """EROFS inode data layouts that RAFS v6 uses."""

    FLAT_PLAIN = 0
    FLAT_INLINE = 2
    CHUNK_BASED = 4


class FileType(IntEnum):
    """EROFS directory entry file types."""

    UNKNOWN = 0
    REGULAR = 1
    DIRECTORY = 2
    CHAR_DEVICE = 3
    BLOCK_DEVICE = 4
    FIFO = 5
    SOCKET = 6
    SYMLINK = 7


class SuperFlags:
    """Bits of the extended superblock's ``flags`` (nydus's RafsSuperFlags)."""

    COMPRESSION_NONE = 0x1
    COMPRESSION_LZ4 = 0x2
    HASH_BLAKE3 = 0x4
    HASH_SHA256 = 0x8
    EXPLICIT_UID_GID = 0x10
    HAS_XATTR = 0x20
    COMPRESSION_GZIP = 0x40
    COMPRESSION_ZSTD = 0x80
    INLINED_CHUNK_DIGEST = 0x100


class BlobFeatures:
    """Bits of a blob's ``features`` (blob table entry and blob.meta header)."""

    ALIGNED = 0x1
    INLINED_FS_META = 0x2
    CHUNK_INFO_V2 = 0x4
    ZRAN = 0x8
    BATCH = 0x10
    INLINED_CHUNK_DIGEST = 0x20
    HAS_TAR_HEADER = 0x1000_0000
    HAS_TOC = 0x2000_0000
    CAP_TAR_TOC = 0x4000_0000


class Compressor(IntEnum):
    """Compression algorithm numbers as the blob table stores them."""

    NONE = 0
    LZ4_BLOCK = 1
    GZIP = 2
    ZSTD = 3

    @property
    def label(self) -> str:
        return {0: "none", 1: "lz4_block", 2: "gzip", 3: "zstd"}[self.value]

    @property
    def super_flag(self) -> int:
        return {0: SuperFlags.COMPRESSION_NONE, 1: SuperFlags.COMPRESSION_LZ4, 2: SuperFlags.COMPRESSION_GZIP,
                3: SuperFlags.COMPRESSION_ZSTD}[self.value]

    @classmethod
    def from_label(cls, label: str) -> "Compressor":
        for member in cls:
            if member.label == label:
                return member
        raise ValueError(f"unknown compressor {label!r}: want zstd, lz4_block or none")


class Digester(IntEnum):
    """Chunk digest algorithm numbers as the blob table stores them."""

    BLAKE3 = 0
    SHA256 = 1

    @property
    def super_flag(self) -> int:
        return SuperFlags.HASH_BLAKE3 if self is Digester.BLAKE3 else SuperFlags.HASH_SHA256


class FormatError(ValueError):
    """A bootstrap or blob that is not what its headers claim; the message says what."""


_BLOB_ID = re.compile(r"^[0-9a-f]{64}$")


def checked_blob_id(raw: bytes, where: str) -> str:
    """A blob id names files and loop devices: anything but 64 hex digits is refused."""
    text = raw.rstrip(b"\0").decode("ascii", "replace")
    if not _BLOB_ID.match(text):
        raise FormatError(f"{where}: blob id {text[:80]!r} is not 64 hex digits")
    return text


def _unpack(fmt: struct.Struct, data: bytes | memoryview, offset: int, what: str) -> tuple[Any, ...]:
    if offset < 0 or offset + fmt.size > len(data):
        raise FormatError(f"truncated {what} at offset {offset}: file has {len(data)} bytes")
    return fmt.unpack_from(data, offset)


@dataclass
class SuperBlock:
    """The EROFS superblock at byte 1024 (128 bytes)."""

    _FMT = struct.Struct("<IIIBBHQQIIII16s16sIHHH38s")

    root_nid: int
    inos: int
    blocks: int
    meta_blkaddr: int
    extra_devices: int
    build_time: int = 0
    build_time_nsec: int = 0
    feature_compat: int = FEATURE_COMPAT_RAFS_V6
    feature_incompat: int = FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE
    blkszbits: int = BLOCK_BITS
    devt_slotoff: int = DEVICE_TABLE_OFFSET // 128
    magic: int = EROFS_MAGIC

    def pack(self) -> bytes:
        return self._FMT.pack(self.magic, 0, self.feature_compat, self.blkszbits, 0, self.root_nid, self.inos,
                              self.build_time, self.build_time_nsec, self.blocks, self.meta_blkaddr, 0, b"", b"",
                              self.feature_incompat, 0, self.extra_devices, self.devt_slotoff, b"")

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "SuperBlock":
        (magic, _checksum, compat, blkszbits, _extslots, root_nid, inos, build_time, build_nsec, blocks, meta_blkaddr,
         xattr_blkaddr, _uuid, _name, incompat, _u, extra_devices, devt_slotoff, _r) = _unpack(
            cls._FMT, data, SUPER_OFFSET, "superblock")
        if magic != EROFS_MAGIC:
            if len(data) >= 4 and struct.unpack_from("<I", data, 0)[0] == RAFS_V5_MAGIC:
                raise FormatError("this is a RAFS v5 bootstrap (magic 'SFAR'); only RAFS v6 is supported")
            raise FormatError(f"not a RAFS v6 bootstrap: no EROFS magic at offset 1024 (found {magic:#010x})")
        if not compat & FEATURE_COMPAT_RAFS_V6:
            raise FormatError("an EROFS image but not RAFS v6: feature_compat lacks the RAFS_V6 bit")
        if blkszbits != BLOCK_BITS:
            raise FormatError(f"unsupported block size 2^{blkszbits}: only 4096-byte blocks are supported")
        if xattr_blkaddr:
            raise FormatError("shared xattr area is not supported in RAFS v6")
        return cls(root_nid=root_nid, inos=inos, blocks=blocks, meta_blkaddr=meta_blkaddr,
                   extra_devices=extra_devices, build_time=build_time, build_time_nsec=build_nsec,
                   feature_compat=compat, feature_incompat=incompat, blkszbits=blkszbits,
                   devt_slotoff=devt_slotoff, magic=magic)


@dataclass
class SuperBlockExt:
    """nydus's extended superblock at byte 1152 (256 bytes): where its tables are."""

    _FMT = struct.Struct("<QQIIQQQII200s")

    flags: int
    blob_table_offset: int
    blob_table_size: int
    chunk_size: int
    chunk_table_offset: int
    chunk_table_size: int
    prefetch_table_offset: int = 0
    prefetch_table_size: int = 0

    def pack(self) -> bytes:
        return self._FMT.pack(self.flags, self.blob_table_offset, self.blob_table_size, self.chunk_size,
                              self.chunk_table_offset, self.chunk_table_size, self.prefetch_table_offset,
                              self.prefetch_table_size, 0, b"")

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> "SuperBlockExt":
        values = _unpack(cls._FMT, data, EXT_SUPER_OFFSET, "extended superblock")
        return cls(*values[:8])

    @property
    def compressor(self) -> Compressor:
        for member in Compressor:
            if self.flags & member.super_flag:
                return member
        raise FormatError(f"extended superblock flags {self.flags:#x} name no compressor")

    @property
    def digester(self) -> Digester:
        return Digester.SHA256 if self.flags & SuperFlags.HASH_SHA256 else Digester.BLAKE3


@dataclass
class DeviceSlot:
    """One EROFS extra device (128 bytes): a data blob whose uncompressed space is the device."""

    _FMT = struct.Struct("<64sII56s")
    SIZE = _FMT.size

    blob_id: str
    blocks: int
    mapped_blkaddr: int

    def pack(self) -> bytes:
        return self._FMT.pack(self.blob_id.encode(), self.blocks, self.mapped_blkaddr, b"")

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int) -> "DeviceSlot":
        tag, blocks, mapped, _reserved = _unpack(cls._FMT, data, offset, "device slot")
        return cls(checked_blob_id(tag, f"device slot at {offset}"), blocks, mapped)


@dataclass
class BlobEntry:
    """One entry of the blob table (256 bytes)."""

    _FMT = struct.Struct("<64sIIIIIIQQIIQQQ32s32sQ8sI36s")
    SIZE = _FMT.size

    blob_id: str
    blob_index: int
    chunk_size: int
    chunk_count: int
    compressor: Compressor
    digester: Digester
    features: int
    compressed_size: int
    uncompressed_size: int
    toc_size: int = 0
    ci_compressor: Compressor = Compressor.NONE
    ci_offset: int = 0
    ci_compressed_size: int = 0
    ci_uncompressed_size: int = 0
    toc_digest: bytes = b"\0" * 32

    def pack(self) -> bytes:
        return self._FMT.pack(self.blob_id.encode(), self.blob_index, self.chunk_size, self.chunk_count,
                              self.compressor, self.digester, self.features, self.compressed_size,
                              self.uncompressed_size, self.toc_size, self.ci_compressor, self.ci_offset,
                              self.ci_compressed_size, self.ci_uncompressed_size, self.toc_digest, b"", 0, b"", 0,
                              b"")

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int) -> "BlobEntry":
        (blob_id, index, chunk_size, count, compressor, digester, features, csize, usize, toc_size, ci_comp, ci_off,
         ci_csize, ci_usize, toc_digest, _meta_digest, _meta_size, _iv, cipher, _r) = _unpack(
            cls._FMT, data, offset, "blob table entry")
        if cipher:
            raise FormatError(f"blob {blob_id[:12]!r} is encrypted; encrypted blobs are not supported")
        try:
            return cls(checked_blob_id(blob_id, f"blob table entry at {offset}"), index, chunk_size, count,
                       Compressor(compressor),
                       Digester(digester), features, csize, usize, toc_size, Compressor(ci_comp), ci_off, ci_csize,
                       ci_usize, toc_digest)
        except (ValueError, UnicodeDecodeError) as error:
            raise FormatError(f"invalid blob table entry at offset {offset}: {error}") from None


@dataclass
class ChunkRecord:
    """One entry of the bootstrap's chunk table (80 bytes): where a chunk lives in its blob."""

    _FMT = struct.Struct("<32sIIIIQQQII")
    SIZE = _FMT.size
    FLAG_COMPRESSED = 0x1

    digest: bytes
    blob_index: int
    flags: int
    compressed_size: int
    uncompressed_size: int
    compressed_offset: int
    uncompressed_offset: int
    file_offset: int
    index: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & self.FLAG_COMPRESSED)

    def pack(self) -> bytes:
        return self._FMT.pack(self.digest, self.blob_index, self.flags, self.compressed_size, self.uncompressed_size,
                              self.compressed_offset, self.uncompressed_offset, self.file_offset, self.index, 0)

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int) -> "ChunkRecord":
        values = _unpack(cls._FMT, data, offset, "chunk table entry")
        return cls(*values[:9])

    def check(self, chunk_size: int, blob_size: int, space: int) -> None:
        """Refuse sizes a reader would allocate or fetch on trust: nydus never makes a chunk
        larger than the image's chunk size, nor one outside its blob (``blob_size`` bytes) or
        the blob's uncompressed ``space``."""
        if not 0 < self.uncompressed_size <= chunk_size:
            raise FormatError(f"chunk {self.index} claims {self.uncompressed_size} bytes uncompressed; the image's "
                              f"chunk size is {chunk_size}")
        if self.compressed and not 0 < self.compressed_size <= max_compressed_size(chunk_size):
            raise FormatError(f"chunk {self.index} claims {self.compressed_size} bytes compressed, more than a "
                              f"{chunk_size}-byte chunk can take")
        if not self.compressed and self.compressed_size != self.uncompressed_size:
            raise FormatError(f"chunk {self.index} is stored uncompressed yet claims {self.compressed_size} bytes "
                              f"for {self.uncompressed_size}")
        if self.compressed_offset + self.compressed_size > blob_size:
            raise FormatError(f"chunk {self.index} ends past the end of its {blob_size}-byte blob")
        if self.uncompressed_offset + self.uncompressed_size > space:
            raise FormatError(f"chunk {self.index} ends past its blob's {space} bytes of uncompressed space")


@dataclass(frozen=True)
class ChunkAddress:
    """A chunk-based inode's 8-byte index entry; EROFS reads ``device_id`` and ``blkaddr``."""

    _FMT = struct.Struct("<HHI")
    SIZE = _FMT.size

    blob_index: int
    chunk_index: int
    blkaddr: int

    def pack(self) -> bytes:
        low = self.chunk_index & 0xFFFF
        high = ((self.chunk_index >> 16) << 8) | ((self.blob_index + 1) & 0xFF)
        return self._FMT.pack(low, high, self.blkaddr)

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int) -> "ChunkAddress | None":
        """None for a hole (no device, no block)."""
        low, high, blkaddr = _unpack(cls._FMT, data, offset, "chunk index")
        if blkaddr == NULL_ADDR:
            return None
        return cls((high & 0xFF) - 1, ((high >> 8) << 16) | low, blkaddr)


@dataclass
class Inode:
    """The fields of an EROFS inode that RAFS v6 uses (written as the 64-byte extended form)."""

    _EXTENDED = struct.Struct("<HHHHQIIIIQII16x")
    _COMPACT = struct.Struct("<HHHHIIIIHHI")

    layout: Layout
    mode: int
    size: int
    u: int
    ino: int
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    nlink: int
    xattr_icount: int = 0
    extended: bool = True

    @property
    def header_size(self) -> int:
        return 64 if self.extended else 32

    @property
    def xattr_size(self) -> int:
        return 0 if self.xattr_icount == 0 else 12 + (self.xattr_icount - 1) * 4

    def pack(self) -> bytes:
        i_format = 1 | (self.layout << 1)
        return self._EXTENDED.pack(i_format, self.xattr_icount, self.mode, 0, self.size, self.u, self.ino, self.uid,
                                   self.gid, self.mtime, self.mtime_nsec, self.nlink)

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int, build_time: tuple[int, int]) -> "Inode":
        i_format = _unpack(struct.Struct("<H"), data, offset, "inode")[0]
        layout_value = (i_format >> 1) & 0x7
        try:
            layout = Layout(layout_value)
        except ValueError:
            raise FormatError(f"inode at offset {offset}: unsupported data layout {layout_value}") from None
        if i_format & 1:
            (_f, icount, mode, _r, size, u, ino, uid, gid, mtime, nsec, nlink) = _unpack(
                cls._EXTENDED, data, offset, "extended inode")
            return cls(layout, mode, size, u, ino, uid, gid, mtime, nsec, nlink, icount, True)
        (_f, icount, mode, nlink, size, _r, u, ino, uid, gid, _r2) = _unpack(cls._COMPACT, data, offset,
                                                                              "compact inode")
        return cls(layout, mode, size, u, ino, uid, gid, build_time[0], build_time[1], nlink, icount, False)


DIRENT = struct.Struct("<QHBB")


# ToC entry flags name a part's compression.
TOC_COMPRESSORS = {1: Compressor.NONE, 2: Compressor.ZSTD, 4: Compressor.LZ4_BLOCK}


@dataclass
class TocEntry:
    """One entry of a data blob's table of contents (128 bytes), read from the blob's tail."""

    _FMT = struct.Struct("<II16s32sQQQ48s")
    SIZE = _FMT.size

    flags: int
    name: str
    sha256: bytes
    compressed_offset: int
    compressed_size: int
    uncompressed_size: int

    def pack(self) -> bytes:
        return self._FMT.pack(self.flags, 0, self.name.encode(), self.sha256, self.compressed_offset,
                              self.compressed_size, self.uncompressed_size, b"")

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int) -> "TocEntry":
        flags, _r, name, sha, coff, csize, usize, _r2 = _unpack(cls._FMT, data, offset, "ToC entry")
        return cls(flags, name.rstrip(b"\0").decode("ascii", "replace"), sha, coff, csize, usize)


@dataclass
class BlobMetaHeader:
    """The 4 KiB ``blob.meta.header``: describes the blob's chunk-info table."""

    _FMT = struct.Struct("<IIIIQQQQQI")
    MAGIC = 0xB10BB10B
    SIZE = 4096

    features: int
    ci_compressor: Compressor
    ci_entries: int
    ci_offset: int
    ci_compressed_size: int
    ci_uncompressed_size: int

    def pack(self) -> bytes:
        head = self._FMT.pack(self.MAGIC, self.features, self.ci_compressor, self.ci_entries, self.ci_offset,
                              self.ci_compressed_size, self.ci_uncompressed_size, 0, 0, 0)
        return head + b"\0" * (self.SIZE - len(head) - 4) + struct.pack("<I", self.MAGIC)

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int = 0) -> "BlobMetaHeader":
        magic, features, comp, entries, ci_off, ci_csize, ci_usize, *_zran = _unpack(cls._FMT, data, offset,
                                                                                     "blob.meta header")
        if magic != cls.MAGIC:
            raise FormatError(f"blob.meta header has magic {magic:#x}, want {cls.MAGIC:#x}")
        try:
            compressor = Compressor(comp)
        except ValueError:
            raise FormatError(f"blob.meta header names unknown compressor {comp}") from None
        return cls(features, compressor, entries, ci_off, ci_csize, ci_usize)


@dataclass(frozen=True)
class ChunkInfoV2:
    """A 24-byte chunk-info entry of ``blob.meta``: the blob's own map of its chunks."""

    _FMT = struct.Struct("<QQQ")
    SIZE = _FMT.size
    FLAG_COMPRESSED = 0x1

    uncompressed_offset: int
    uncompressed_size: int
    compressed_offset: int
    compressed_size: int
    compressed: bool
    data: int = 0

    def pack(self) -> bytes:
        flags = self.FLAG_COMPRESSED if self.compressed else 0
        uncomp = (self.uncompressed_offset >> 12) | ((self.uncompressed_size - 1) << 32) | (flags << 56)
        comp = self.compressed_offset | (self.compressed_size << 40)
        return self._FMT.pack(uncomp, comp, self.data)

    @classmethod
    def unpack(cls, data: bytes | memoryview, offset: int) -> "ChunkInfoV2":
        uncomp, comp, extra = _unpack(cls._FMT, data, offset, "chunk info")
        return cls((uncomp & 0xFFFFFFFF) << 12, ((uncomp >> 32) & 0xFFFFFF) + 1, comp & 0xFF_FFFF_FFFF, comp >> 40,
                   bool((uncomp >> 56) & cls.FLAG_COMPRESSED), extra)


# EROFS xattr name prefixes by index (none is a prefix of another).
XATTR_PREFIXES: tuple[tuple[int, str], ...] = (
    (2, "system.posix_acl_access"), (3, "system.posix_acl_default"), (1, "user."), (4, "trusted."), (6, "security."))


def pack_xattr(name: str, value: bytes) -> bytes:
    """One inline xattr entry, padded to 4 bytes: prefix index, the rest of the name, the value."""
    for index, prefix in XATTR_PREFIXES:  # noqa: B007 - index is read after the loop
        if name.startswith(prefix):
            suffix = name[len(prefix):].encode()
            break
    else:
        raise FormatError(f"xattr {name!r}: EROFS stores only user., trusted., security. and POSIX ACLs")
    body = struct.pack("<BBH", len(suffix), index, len(value)) + suffix + value
    return body + b"\0" * (-len(body) % 4)


def xattr_prefix(index: int) -> str:
    for known, prefix in XATTR_PREFIXES:
        if known == index:
            return prefix
    raise FormatError(f"unknown xattr name index {index}")
