"""Chunk compression and chunk digests, by the algorithm numbers a bootstrap records."""

from __future__ import annotations

import hashlib

import blake3
import lz4.block
import zstandard

from damselfly.nydus.layout import Compressor, Digester, FormatError

_ZSTD_LEVEL = 3


def compress(compressor: Compressor, data: bytes) -> bytes:
    if compressor is Compressor.ZSTD:
        return zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(data)
    if compressor is Compressor.LZ4_BLOCK:
        out: bytes = lz4.block.compress(data, store_size=False)  # lz4 ships no type hints
        return out
    if compressor is Compressor.NONE:
        return data
    raise FormatError(f"compressor {compressor.label} is not supported for writing")


def decompress(compressor: Compressor, data: bytes, size: int) -> bytes:
    """Exactly ``size`` bytes back, or FormatError: a chunk never decodes to a different length.

    At most ``size`` bytes (plus one, to see an overrun) are ever allocated, whatever the data
    claims: zstd's one-shot decompress sizes its buffer by the frame header and ignores any
    cap, so a 32 KiB frame could ask for a GiB. The caller bounds ``size`` itself (a chunk's
    by the image's chunk size)."""
    try:
        if compressor is Compressor.ZSTD:
            with zstandard.ZstdDecompressor().stream_reader(data) as reader:
                out = reader.read(size + 1)
        elif compressor is Compressor.LZ4_BLOCK:
            out = lz4.block.decompress(data, uncompressed_size=size)
        elif compressor is Compressor.NONE:
            out = bytes(data)
        else:
            raise FormatError(f"compressor {compressor.label} is not supported")
    except (zstandard.ZstdError, lz4.block.LZ4BlockError) as error:
        raise FormatError(f"chunk does not decompress with {compressor.label}: {error}") from None
    if len(out) > size:
        raise FormatError(f"chunk decompresses to more than the {size} bytes it claims")
    if len(out) < size:
        raise FormatError(f"chunk decompressed to {len(out)} bytes, want {size}")
    return out


def chunk_digest(digester: Digester, data: bytes) -> bytes:
    if digester is Digester.BLAKE3:
        return blake3.blake3(data).digest()
    return hashlib.sha256(data).digest()
