"""Reading a RAFS v6 bootstrap: superblocks, blobs, chunks and the file tree (pure)."""

from __future__ import annotations

import stat
import struct
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from damselfly.nydus import codec
from damselfly.nydus.layout import (
    BLOCK_BITS, BLOCK_SIZE, CHUNK_FORMAT_BLKBITS_MASK, CHUNK_FORMAT_INDEXES, DIRENT, INODE_SLOT, MAX_BOOTSTRAP_SIZE,
    BlobEntry, ChunkAddress, ChunkRecord, Compressor, DeviceSlot, FormatError, Inode, Layout, SuperBlock,
    SuperBlockExt, TocEntry, check_bootstrap_size, valid_chunk_size, xattr_prefix,
)

_XATTR_ENTRY = struct.Struct("<BBH")


@dataclass
class Entry:
    """One path of the image with its inode; regular files carry their chunk addresses."""

    path: str
    nid: int
    inode: Inode
    xattrs: dict[str, bytes] = field(default_factory=dict)
    chunks: list[ChunkAddress | None] = field(default_factory=list)
    target: bytes = b""

    @property
    def mode(self) -> int:
        return self.inode.mode

    @property
    def rdev(self) -> int:
        return self.inode.u if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode) else 0


class Bootstrap:
    """A parsed bootstrap; the tree is walked on demand from the root inode."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        check_bootstrap_size(len(data))
        if len(data) < BLOCK_SIZE:
            SuperBlock.unpack(data)  # names a v5 file or a foreign one before complaining about size
            raise FormatError(f"bootstrap is {len(data)} bytes, smaller than one block")
        self.superblock = SuperBlock.unpack(data)
        self.ext = SuperBlockExt.unpack(data)
        self.chunk_size = self.ext.chunk_size
        if not valid_chunk_size(self.chunk_size):
            raise FormatError(f"invalid chunk size {self.chunk_size}")
        slot_base = self.superblock.devt_slotoff * DeviceSlot.SIZE
        self.devices = [DeviceSlot.unpack(data, slot_base + i * DeviceSlot.SIZE)
                        for i in range(self.superblock.extra_devices)]
        if self.ext.blob_table_size % BlobEntry.SIZE:
            raise FormatError(f"blob table size {self.ext.blob_table_size} is not a multiple of 256")
        self.blobs = [BlobEntry.unpack(data, self.ext.blob_table_offset + i * BlobEntry.SIZE)
                      for i in range(self.ext.blob_table_size // BlobEntry.SIZE)]
        for position, blob in enumerate(self.blobs):  # chunks and devices name blobs by this index
            if blob.blob_index != position:
                raise FormatError(f"blob table entry {position} calls itself blob {blob.blob_index}")
        if self.ext.chunk_table_size % ChunkRecord.SIZE:
            raise FormatError(f"chunk table size {self.ext.chunk_table_size} is not a multiple of 80")
        self.chunks = [ChunkRecord.unpack(data, self.ext.chunk_table_offset + i * ChunkRecord.SIZE)
                       for i in range(self.ext.chunk_table_size // ChunkRecord.SIZE)]
        self._by_block = {(c.blob_index, c.uncompressed_offset // BLOCK_SIZE): c for c in self.chunks}
        for chunk in self.chunks:
            if chunk.blob_index >= len(self.blobs):
                raise FormatError(f"chunk {chunk.index} names blob {chunk.blob_index}; the table has "
                                  f"{len(self.blobs)}")
            chunk.check(self.chunk_size, self.blobs[chunk.blob_index].compressed_size,
                        self.device_size(chunk.blob_index))

    @classmethod
    def load(cls, path: str) -> "Bootstrap":
        """Read at most one byte past the limit: enough to refuse a larger file without reading it."""
        with open(path, "rb") as file:
            return cls(file.read(MAX_BOOTSTRAP_SIZE + 1))

    # --- inodes -------------------------------------------------------------------------------------------

    def inode_offset(self, nid: int) -> int:
        return self.superblock.meta_blkaddr * BLOCK_SIZE + nid * INODE_SLOT

    def inode(self, nid: int) -> Inode:
        sb = self.superblock
        return Inode.unpack(self.data, self.inode_offset(nid), (sb.build_time, sb.build_time_nsec))

    def inline_data(self, nid: int, inode: Inode) -> bytes:
        """The bytes of a directory or symlink kept in the bootstrap (plain blocks plus inline tail)."""
        if inode.layout is Layout.CHUNK_BASED:
            raise FormatError(f"nid {nid}: chunk-based inode has no inline data")
        size = inode.size
        if inode.layout is Layout.FLAT_PLAIN:
            start = inode.u * BLOCK_SIZE
            body = self.data[start:start + size]
        else:
            full = size - size % BLOCK_SIZE
            start = inode.u * BLOCK_SIZE
            tail_at = self.inode_offset(nid) + inode.header_size + inode.xattr_size
            body = self.data[start:start + full] + self.data[tail_at:tail_at + size % BLOCK_SIZE]
        if len(body) != size:
            raise FormatError(f"nid {nid}: data runs past the end of the bootstrap")
        return body

    def xattrs(self, nid: int, inode: Inode) -> dict[str, bytes]:
        if not inode.xattr_icount:
            return {}
        base = self.inode_offset(nid) + inode.header_size
        end = base + inode.xattr_size
        if end > len(self.data):
            raise FormatError(f"nid {nid}: xattrs run past the end of the bootstrap")
        if self.data[base + 4]:
            raise FormatError(f"nid {nid}: shared xattrs are not supported")
        found: dict[str, bytes] = {}
        at = base + 12
        while at + _XATTR_ENTRY.size <= end:
            name_len, index, value_len = _XATTR_ENTRY.unpack_from(self.data, at)
            at += _XATTR_ENTRY.size
            name = xattr_prefix(index) + self.data[at:at + name_len].decode("utf-8", "surrogateescape")
            found[name] = bytes(self.data[at + name_len:at + name_len + value_len])
            at += name_len + value_len
            at += -at % 4
        return found

    def chunk_addresses(self, nid: int, inode: Inode) -> list[ChunkAddress | None]:
        if inode.layout is not Layout.CHUNK_BASED or inode.size == 0:
            return []
        if not inode.u & CHUNK_FORMAT_INDEXES:
            raise FormatError(f"nid {nid}: chunk-based inode without 8-byte chunk indexes (not RAFS v6)")
        chunk_bits = (inode.u & CHUNK_FORMAT_BLKBITS_MASK) + BLOCK_BITS
        count = (inode.size + (1 << chunk_bits) - 1) >> chunk_bits
        base = self.inode_offset(nid) + inode.header_size + inode.xattr_size
        base += -base % ChunkAddress.SIZE
        return [ChunkAddress.unpack(self.data, base + i * ChunkAddress.SIZE) for i in range(count)]

    def chunk(self, address: ChunkAddress) -> ChunkRecord:
        record = self._by_block.get((address.blob_index, address.blkaddr))
        if record is None:
            raise FormatError(f"no chunk in blob {address.blob_index} at block {address.blkaddr}")
        return record

    # --- the tree -------------------------------------------------------------------------------------------

    def directory(self, nid: int, inode: Inode) -> list[tuple[bytes, int, int]]:
        """(name, nid, file type) of each entry, "." and ".." included, in on-disk order."""
        data = self.inline_data(nid, inode)
        entries: list[tuple[bytes, int, int]] = []
        for block_start in range(0, len(data), BLOCK_SIZE):
            block = data[block_start:block_start + BLOCK_SIZE]
            if len(block) < DIRENT.size:
                raise FormatError(f"nid {nid}: directory block too short")
            first_nameoff = DIRENT.unpack_from(block, 0)[1]
            count = first_nameoff // DIRENT.size
            if count == 0 or first_nameoff % DIRENT.size or first_nameoff > len(block):
                raise FormatError(f"nid {nid}: corrupt directory block")
            dirents = [DIRENT.unpack_from(block, i * DIRENT.size) for i in range(count)]
            for i, (child, nameoff, ftype, _r) in enumerate(dirents):
                end = dirents[i + 1][1] if i + 1 < count else len(block)
                if not nameoff <= end <= len(block):
                    raise FormatError(f"nid {nid}: corrupt directory entry")
                name = bytes(block[nameoff:end]).split(b"\0", 1)[0]
                entries.append((name, child, ftype))
        return entries

    def walk(self) -> Iterator[Entry]:
        """Every path, parents before children; a hard-linked inode appears once per path."""
        root = self.superblock.root_nid
        stack: list[tuple[str, int]] = [("/", root)]
        seen_dirs: set[int] = set()
        while stack:
            path, nid = stack.pop()
            inode = self.inode(nid)
            entry = Entry(path, nid, inode, self.xattrs(nid, inode))
            if stat.S_ISDIR(inode.mode):
                if nid in seen_dirs:
                    raise FormatError(f"directory loop at {path}")
                seen_dirs.add(nid)
                children = [(name, child) for name, child, _t in self.directory(nid, inode)
                            if name not in (b".", b"..")]
                for name, child in reversed(children):
                    if b"/" in name or not name:
                        raise FormatError(f"invalid name {name!r} in {path}")
                    prefix = path if path.endswith("/") else path + "/"
                    stack.append((prefix + name.decode("utf-8", "surrogateescape"), child))
            elif stat.S_ISLNK(inode.mode):
                entry.target = self.inline_data(nid, inode)
            elif stat.S_ISREG(inode.mode):
                entry.chunks = self.chunk_addresses(nid, inode)
            yield entry

    def blob_chunks(self, blob_index: int) -> list[ChunkRecord]:
        return sorted((c for c in self.chunks if c.blob_index == blob_index), key=lambda c: c.uncompressed_offset)

    def device_size(self, blob_index: int) -> int:
        """Bytes of the blob's uncompressed space as EROFS sees it (whole blocks)."""
        if blob_index < len(self.devices):
            return self.devices[blob_index].blocks * BLOCK_SIZE
        entry = self.blobs[blob_index]
        return -(-entry.uncompressed_size // BLOCK_SIZE) * BLOCK_SIZE


def rebuild_uncompressed(bootstrap: Bootstrap, blob_index: int, blob: BinaryIO, out: BinaryIO,
                         verify: bool = True) -> int:
    """Write the blob's uncompressed space (what EROFS reads as the device) from its data blob."""
    entry = bootstrap.blobs[blob_index]
    size = bootstrap.device_size(blob_index)
    end = 0
    for chunk in bootstrap.blob_chunks(blob_index):
        blob.seek(chunk.compressed_offset)
        raw = blob.read(chunk.compressed_size)
        if len(raw) != chunk.compressed_size:
            raise FormatError(f"blob {entry.blob_id[:12]} ends before chunk {chunk.index}")
        data = codec.decompress(entry.compressor if chunk.compressed else Compressor.NONE, raw, chunk.uncompressed_size)
        if verify and codec.chunk_digest(entry.digester, data) != chunk.digest:
            raise FormatError(f"chunk {chunk.index} of blob {entry.blob_id[:12]} does not match its digest")
        out.seek(chunk.uncompressed_offset)
        out.write(data)
        end = max(end, chunk.uncompressed_offset + len(data))
    if end < size:  # the rest of the last block is zeros
        out.seek(size - 1)
        out.write(b"\0")
    return size


def read_toc(blob_tail: bytes) -> list[TocEntry]:
    """The table of contents at the end of a data blob: entries, then a tar header named rafs.blob.toc."""
    if len(blob_tail) < 512:
        raise FormatError("data blob is shorter than one tar header")
    try:
        header = tarfile.TarInfo.frombuf(blob_tail[-512:], "utf-8", "surrogateescape")
    except tarfile.TarError:
        header = None
    if header is None or header.name != "rafs.blob.toc":
        raise FormatError("no blob ToC: the last 512 bytes are not a tar header named rafs.blob.toc")
    size = header.size
    if size % TocEntry.SIZE or size + 512 > len(blob_tail):
        raise FormatError(f"blob ToC of {size} bytes does not fit the blob")
    start = len(blob_tail) - 512 - size
    return [TocEntry.unpack(blob_tail, start + i * TocEntry.SIZE) for i in range(size // TocEntry.SIZE)]

