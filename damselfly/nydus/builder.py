"""Writing nydus data blobs and the RAFS v6 bootstrap that describes them (pure, no mkfs).

A data blob holds the compressed chunks of the files one layer added, then its chunk-info
table, chunk digests and a table of contents, each followed by a tar header so the blob
reads as a tar from its end. The bootstrap is an EROFS image whose regular files are
chunk-based: each chunk index names a blob (an EROFS extra device) and the block where the
chunk starts in that blob's uncompressed space.
"""

from __future__ import annotations

import hashlib
import stat
import tarfile
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from damselfly.nydus import codec
from damselfly.nydus.layout import (
    BLOCK_BITS, BLOCK_SIZE, CHUNK_FORMAT_INDEXES, DEFAULT_CHUNK_SIZE, DEVICE_TABLE_OFFSET, DIRENT, EXT_SUPER_OFFSET, INODE_SLOT, SUPER_OFFSET, BlobEntry, BlobFeatures,
    BlobMetaHeader, ChunkAddress, ChunkInfoV2, ChunkRecord, Compressor, DeviceSlot, Digester, FileType, Inode, Layout,
    SuperBlock, SuperBlockExt, SuperFlags, TocEntry, pack_xattr,
)
from damselfly.nydus.tree import Node, walk

BLOB_FEATURES = (BlobFeatures.ALIGNED | BlobFeatures.CHUNK_INFO_V2 | BlobFeatures.INLINED_CHUNK_DIGEST
                 | BlobFeatures.HAS_TAR_HEADER | BlobFeatures.HAS_TOC | BlobFeatures.CAP_TAR_TOC)


def _align(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte header that follows each part of a data blob."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0
    info.mtime = 0
    return info.tobuf(format=tarfile.GNU_FORMAT)


@dataclass
class ChunkSettings:
    compressor: Compressor = Compressor.ZSTD
    digester: Digester = Digester.BLAKE3
    chunk_size: int = DEFAULT_CHUNK_SIZE


class BlobWriter:
    """Streams one layer's file data into a data blob; chunks seen before are shared, not stored."""

    def __init__(self, out: BinaryIO, blob_index: int, settings: ChunkSettings,
                 known: dict[bytes, ChunkRecord]) -> None:
        self.out = out
        self.blob_index = blob_index
        self.settings = settings
        self.known = known
        self.records: list[ChunkRecord] = []
        self.hash = hashlib.sha256()
        self.compressed_offset = 0
        self.uncompressed_offset = 0

    def _write(self, data: bytes) -> int:
        at = self.compressed_offset
        self.out.write(data)
        self.hash.update(data)
        self.compressed_offset += len(data)
        return at

    def add_file(self, node: Node, source: IO[bytes]) -> None:
        node.chunks = []
        file_offset = 0
        while file_offset < node.size:
            data = source.read(min(self.settings.chunk_size, node.size - file_offset))
            if not data:
                raise ValueError(f"layer ends inside a file: {node.size - file_offset} bytes missing")
            node.chunks.append(self._add_chunk(data, file_offset))
            file_offset += len(data)

    def _add_chunk(self, data: bytes, file_offset: int) -> ChunkRecord:
        digest = codec.chunk_digest(self.settings.digester, data)
        if digest in self.known:
            return self.known[digest]
        packed = codec.compress(self.settings.compressor, data)
        compressed = self.settings.compressor is not Compressor.NONE and len(packed) < len(data)
        payload = packed if compressed else data
        record = ChunkRecord(digest=digest, blob_index=self.blob_index,
                             flags=ChunkRecord.FLAG_COMPRESSED if compressed else 0,
                             compressed_size=len(payload), uncompressed_size=len(data),
                             compressed_offset=self._write(payload), uncompressed_offset=self.uncompressed_offset,
                             file_offset=file_offset, index=len(self.records))
        self.uncompressed_offset += _align(len(data), BLOCK_SIZE)
        self.records.append(record)
        self.known[digest] = record
        return record

    def finish(self) -> BlobEntry:
        """Append the metadata parts and the ToC; the blob id is the sha256 of the whole blob."""
        data_size = self.compressed_offset
        self._write(tar_header("image.blob", data_size))
        chunk_info = b"".join(ChunkInfoV2(r.uncompressed_offset, r.uncompressed_size, r.compressed_offset,
                                          r.compressed_size, r.compressed).pack() for r in self.records)
        ci_offset = self.compressed_offset
        header = BlobMetaHeader(BLOB_FEATURES, Compressor.NONE, len(self.records), ci_offset, len(chunk_info),
                                len(chunk_info)).pack()
        self._write(chunk_info + header)
        self._write(tar_header("blob.meta", len(chunk_info) + len(header)))
        digests = b"".join(r.digest for r in self.records)
        digest_offset = self._write(digests)
        self._write(tar_header("blob.digest", len(digests)))
        toc = b"".join(entry.pack() for entry in (
            TocEntry(1, "image.blob", b"\0" * 32, 0, data_size, data_size),
            TocEntry(1, "blob.meta", hashlib.sha256(chunk_info).digest(), ci_offset, len(chunk_info),
                     len(chunk_info)),
            TocEntry(1, "blob.meta.header", hashlib.sha256(header).digest(), ci_offset + len(chunk_info),
                     len(header), len(header)),
            TocEntry(1, "blob.digest", hashlib.sha256(digests).digest(), digest_offset, len(digests), len(digests)),
        ))
        toc_part = toc + tar_header("rafs.blob.toc", len(toc))
        self._write(toc_part)
        return BlobEntry(blob_id=self.hash.hexdigest(), blob_index=self.blob_index,
                         chunk_size=self.settings.chunk_size, chunk_count=len(self.records),
                         compressor=self.settings.compressor, digester=self.settings.digester,
                         features=BLOB_FEATURES, compressed_size=self.compressed_offset,
                         uncompressed_size=self.uncompressed_offset, toc_size=len(toc_part),
                         ci_compressor=Compressor.NONE, ci_offset=ci_offset, ci_compressed_size=len(chunk_info),
                         ci_uncompressed_size=len(chunk_info), toc_digest=hashlib.sha256(toc_part).digest())


# --- the bootstrap ----------------------------------------------------------------------------------------------

_FILE_TYPES = {stat.S_IFREG: FileType.REGULAR, stat.S_IFDIR: FileType.DIRECTORY, stat.S_IFCHR: FileType.CHAR_DEVICE,
               stat.S_IFBLK: FileType.BLOCK_DEVICE, stat.S_IFIFO: FileType.FIFO, stat.S_IFSOCK: FileType.SOCKET,
               stat.S_IFLNK: FileType.SYMLINK}


def directory_blocks(names: list[bytes]) -> list[list[bytes]]:
    """Sorted names packed into 4 KiB directory blocks (an entry never spans two blocks)."""
    blocks: list[list[bytes]] = [[]]
    used = 0
    for name in names:
        cost = DIRENT.size + len(name)
        if used + cost > BLOCK_SIZE:
            blocks.append([])
            used = 0
        blocks[-1].append(name)
        used += cost
    return blocks


def encode_directory_block(entries: list[tuple[bytes, int, int]], pad: bool) -> bytes:
    names_at = DIRENT.size * len(entries)
    heads, names = [], []
    for name, nid, file_type in entries:
        heads.append(DIRENT.pack(nid, names_at, file_type, 0))
        names.append(name)
        names_at += len(name)
    block = b"".join(heads) + b"".join(names)
    return block + b"\0" * (BLOCK_SIZE - len(block)) if pad else block


@dataclass(eq=False)
class _Planned:
    """Where one inode goes and what it carries, decided before any byte is written."""

    node: Node
    ino: int
    nlink: int = 1
    xattrs: bytes = b""
    layout: Layout = Layout.FLAT_PLAIN
    size: int = 0
    names: list[bytes] = field(default_factory=list)  # directories: sorted, "." and ".." included
    tail: int = 0  # bytes kept inline after the inode
    offset: int = 0
    data_block: int = 0

    @property
    def head_size(self) -> int:
        return 64 + len(self.xattrs)

    @property
    def nid(self) -> int:
        return self.offset // INODE_SLOT


def _xattr_body(xattrs: dict[str, bytes]) -> bytes:
    if not xattrs:
        return b""
    return b"\0" * 12 + b"".join(pack_xattr(name, xattrs[name]) for name in sorted(xattrs))


def build_bootstrap(root: Node, blobs: list[BlobEntry], settings: ChunkSettings, records: list[ChunkRecord]) -> bytes:
    """The RAFS v6 bootstrap for a tree whose regular files carry chunk records."""
    paths = walk(root)
    plans: dict[int, _Planned] = {}
    for _path, node in paths:
        if id(node) in plans:
            plans[id(node)].nlink += 1
        else:
            plans[id(node)] = _Planned(node, ino=len(plans) + 1)
    for plan in plans.values():
        node = plan.node
        plan.xattrs = _xattr_body(node.xattrs)
        if node.is_dir:
            plan.nlink = 2 + sum(1 for child in node.children.values() if child.is_dir)
            plan.names = sorted([b".", b".."] + [name.encode("utf-8", "surrogateescape") for name in node.children])
            blocks = directory_blocks(plan.names)
            plan.size = BLOCK_SIZE * (len(blocks) - 1) + sum(DIRENT.size + len(n) for n in blocks[-1])
        elif stat.S_ISLNK(node.mode):
            plan.size = len(node.target)
        elif stat.S_ISREG(node.mode):
            plan.size = node.size
            plan.layout = Layout.CHUNK_BASED if node.size else Layout.FLAT_PLAIN
        if plan.layout is not Layout.CHUNK_BASED and plan.size:
            tail = plan.size % BLOCK_SIZE
            if tail and plan.head_size + tail <= BLOCK_SIZE:
                plan.layout, plan.tail = Layout.FLAT_INLINE, tail

    devices_end = DEVICE_TABLE_OFFSET + DeviceSlot.SIZE * len(blobs)
    blob_table_offset = _align(devices_end, BLOCK_SIZE)
    cursor = _align(blob_table_offset + BlobEntry.SIZE * len(blobs), BLOCK_SIZE)
    ordered = list(plans.values())  # the root first: its nid must fit in 16 bits
    for plan in ordered:
        whole = plan.head_size + plan.tail
        if whole <= BLOCK_SIZE and cursor % BLOCK_SIZE + whole > BLOCK_SIZE:
            cursor = _align(cursor, BLOCK_SIZE)
        plan.offset = cursor
        cursor += whole
        if plan.layout is Layout.CHUNK_BASED:
            cursor = _align(cursor, ChunkAddress.SIZE) + ChunkAddress.SIZE * len(plan.node.chunks)
        cursor = _align(cursor, INODE_SLOT)
    if ordered[0].nid > 0xFFFF:
        raise ValueError("root inode does not fit a 16-bit nid")
    cursor = _align(cursor, BLOCK_SIZE)
    for plan in ordered:
        full = plan.size - plan.tail if plan.layout is not Layout.CHUNK_BASED else 0
        if full:
            plan.data_block = cursor // BLOCK_SIZE
            cursor += _align(full, BLOCK_SIZE)
    chunk_table_offset = cursor
    chunk_table = b"".join(record.pack() for record in records)
    total = _align(chunk_table_offset + len(chunk_table), BLOCK_SIZE)

    image = bytearray(total)
    by_id = {id(plan.node): plan for plan in ordered}
    parent_of = {id(root): by_id[id(root)]}  # ".." of the root is the root
    for _path, node in paths:
        for child in node.children.values():
            if child.is_dir:
                parent_of[id(child)] = by_id[id(node)]
    for plan in ordered:
        node = plan.node
        if plan.layout is Layout.CHUNK_BASED:
            u = CHUNK_FORMAT_INDEXES | (settings.chunk_size.bit_length() - 1 - BLOCK_BITS)
        elif stat.S_ISCHR(node.mode) or stat.S_ISBLK(node.mode):
            u = node.rdev
        else:
            u = plan.data_block
        inode = Inode(plan.layout, node.mode, plan.size, u, plan.ino, node.uid, node.gid, node.mtime,
                      node.mtime_nsec, plan.nlink, xattr_icount=(len(plan.xattrs) - 12) // 4 + 1 if plan.xattrs else 0)
        at = plan.offset
        image[at:at + 64] = inode.pack()
        image[at + 64:at + plan.head_size] = plan.xattrs
        body = b""
        if node.is_dir:
            targets = {b".": plan, b"..": parent_of[id(node)]}
            targets.update({name.encode("utf-8", "surrogateescape"): by_id[id(child)]
                            for name, child in node.children.items()})
            blocks = directory_blocks(plan.names)
            body = b"".join(
                encode_directory_block([(name, targets[name].nid, _FILE_TYPES[stat.S_IFMT(targets[name].node.mode)])
                                        for name in block], pad=i + 1 < len(blocks))
                for i, block in enumerate(blocks))
        elif stat.S_ISLNK(node.mode):
            body = node.target
        elif plan.layout is Layout.CHUNK_BASED:
            index_at = _align(at + plan.head_size, ChunkAddress.SIZE)
            addresses = b"".join(ChunkAddress(r.blob_index, r.index, r.uncompressed_offset // BLOCK_SIZE).pack()
                                 for r in node.chunks)
            image[index_at:index_at + len(addresses)] = addresses
        if body:
            full = len(body) - plan.tail
            if full:
                start = plan.data_block * BLOCK_SIZE
                image[start:start + full] = body[:full]
            if plan.tail:
                image[at + plan.head_size:at + plan.head_size + plan.tail] = body[full:]

    bootstrap_blocks = total // BLOCK_SIZE
    mapped = bootstrap_blocks
    for index, blob in enumerate(blobs):
        blocks = blob.uncompressed_size // BLOCK_SIZE
        slot_at = DEVICE_TABLE_OFFSET + index * DeviceSlot.SIZE
        image[slot_at:slot_at + DeviceSlot.SIZE] = DeviceSlot(blob.blob_id, blocks, mapped).pack()
        mapped += blocks
        image[blob_table_offset + index * BlobEntry.SIZE:blob_table_offset + (index + 1) * BlobEntry.SIZE] = blob.pack()
    image[chunk_table_offset:chunk_table_offset + len(chunk_table)] = chunk_table
    flags = (settings.compressor.super_flag | settings.digester.super_flag | SuperFlags.EXPLICIT_UID_GID
             | (SuperFlags.HAS_XATTR if any(p.xattrs for p in ordered) else 0))
    ext = SuperBlockExt(flags, blob_table_offset, BlobEntry.SIZE * len(blobs), settings.chunk_size,
                        chunk_table_offset, len(chunk_table))
    superblock = SuperBlock(root_nid=ordered[0].nid, inos=len(ordered), blocks=mapped, meta_blkaddr=0,
                            extra_devices=len(blobs))
    image[SUPER_OFFSET:SUPER_OFFSET + 128] = superblock.pack()
    image[EXT_SUPER_OFFSET:EXT_SUPER_OFFSET + 256] = ext.pack()
    return bytes(image)
