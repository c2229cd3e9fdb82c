"""Human-readable layout of a bootstrap or data blob, for `damselfly nydus inspect`."""

from __future__ import annotations

import stat
from typing import Iterator

from damselfly.nydus.layout import (
    EROFS_MAGIC, SUPER_OFFSET, TOC_COMPRESSORS, BlobFeatures, BlobMetaHeader, ChunkInfoV2, Compressor,
    check_bootstrap_size,
)
from damselfly.nydus.rafs import Bootstrap, read_toc
from damselfly.nydus import codec


def is_bootstrap(data: bytes) -> bool:
    return len(data) >= SUPER_OFFSET + 4 and int.from_bytes(data[SUPER_OFFSET:SUPER_OFFSET + 4], "little") == EROFS_MAGIC


def describe_bootstrap(bootstrap: Bootstrap, show_chunks: bool = False) -> Iterator[str]:
    sb, ext = bootstrap.superblock, bootstrap.ext
    yield (f"RAFS v6 bootstrap: {len(bootstrap.data)} bytes, {sb.inos} inodes, root nid {sb.root_nid}, "
           f"chunk size {ext.chunk_size}, compressor {ext.compressor.label}, digester {ext.digester.name.lower()}")
    yield f"blobs ({len(bootstrap.blobs)}):"
    for blob in bootstrap.blobs:
        device = bootstrap.devices[blob.blob_index] if blob.blob_index < len(bootstrap.devices) else None
        blocks = f", device {device.blocks} blocks" if device else ""
        yield (f"  [{blob.blob_index}] {blob.blob_id}  {blob.chunk_count} chunks, {blob.compressed_size} bytes "
               f"compressed, {blob.uncompressed_size} uncompressed, {blob.compressor.label}{blocks}")
    yield "files:"
    for entry in bootstrap.walk():
        kind = stat.filemode(entry.mode)
        extra = f" -> {entry.target.decode('utf-8', 'replace')}" if entry.target else ""
        chunks = f"  {len(entry.chunks)} chunks" if entry.chunks else ""
        yield f"  {kind} {entry.inode.uid:>5}:{entry.inode.gid:<5} {entry.inode.size:>10}  {entry.path}{extra}{chunks}"
        if show_chunks:
            for address in entry.chunks:
                if address is None:
                    yield "      hole"
                    continue
                record = bootstrap.chunk(address)
                yield (f"      blob {address.blob_index} chunk {record.index}: compressed {record.compressed_offset}"
                       f"+{record.compressed_size}, uncompressed {record.uncompressed_offset}"
                       f"+{record.uncompressed_size}, digest {record.digest.hex()[:16]}")


def describe_blob(data: bytes) -> Iterator[str]:
    """The ToC of a data blob; an inlined bootstrap or v2 chunk-info table is described too."""
    entries = read_toc(data)
    yield f"nydus data blob: {len(data)} bytes, ToC with {len(entries)} entries"
    for entry in entries:
        yield (f"  {entry.name:<17} offset {entry.compressed_offset:>10} size {entry.compressed_size:>10} "
               f"uncompressed {entry.uncompressed_size:>10} flags {entry.flags:#x}")
    by_name = {entry.name: entry for entry in entries}
    header_entry = by_name.get("blob.meta.header")
    if header_entry:
        header = BlobMetaHeader.unpack(data, header_entry.compressed_offset)
        yield f"  chunk-info: {header.ci_entries} entries, features {header.features:#x}"
        if header.features & BlobFeatures.CHUNK_INFO_V2 and header.ci_compressor is Compressor.NONE:
            for index in range(header.ci_entries):
                info = ChunkInfoV2.unpack(data, header.ci_offset + index * ChunkInfoV2.SIZE)
                yield (f"    chunk {index}: compressed {info.compressed_offset}+{info.compressed_size}, "
                       f"uncompressed {info.uncompressed_offset}+{info.uncompressed_size}")
    boot = by_name.get("image.boot")
    if boot:
        raw = data[boot.compressed_offset:boot.compressed_offset + boot.compressed_size]
        compressor = TOC_COMPRESSORS.get(boot.flags & 0x7, Compressor.NONE)
        check_bootstrap_size(boot.uncompressed_size)
        yield "inlined bootstrap:"
        for line in describe_bootstrap(Bootstrap(codec.decompress(compressor, raw, boot.uncompressed_size))):
            yield "  " + line
