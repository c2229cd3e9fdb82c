"""Piece arithmetic and the piece bitmap of a task (pure).

A task of ``length`` bytes is cut into fixed-length pieces; piece n covers
``[n*L, min((n+1)*L, length))``. Readers ask how far the verified bytes reach from an
offset; writers mark whole pieces done.
"""

from __future__ import annotations

MiB = 1024 * 1024
DEFAULT_PIECE_LENGTH = 4 * MiB
MAX_PIECE_LENGTH = 64 * MiB
TARGET_MAX_PIECES = 1024


def piece_length_for(length: int) -> int:
    """4 MiB, doubled until the task has at most 1024 pieces (capped at 64 MiB)."""
    piece = DEFAULT_PIECE_LENGTH
    while piece < MAX_PIECE_LENGTH and length > piece * TARGET_MAX_PIECES:
        piece *= 2
    return piece


def piece_count(length: int, piece_length: int) -> int:
    return -(-length // piece_length) if length else 0


def piece_span(index: int, length: int, piece_length: int) -> tuple[int, int]:
    """Start offset and size of piece ``index``."""
    start = index * piece_length
    if index < 0 or start >= length:
        raise IndexError(f"piece {index} is outside a task of {length} bytes")
    return start, min(piece_length, length - start)


def pieces_covering(first: int, last: int, piece_length: int) -> range:
    """Indexes of the pieces that hold bytes ``first..last`` (inclusive)."""
    return range(first // piece_length, last // piece_length + 1)


class PieceBitmap:
    """Which pieces of a task are verified and on disk."""

    def __init__(self, count: int, present: bytes | None = None) -> None:
        self.count = count
        self._bits = bytearray(present) if present is not None else bytearray((count + 7) // 8)
        if len(self._bits) != (count + 7) // 8:
            raise ValueError("bitmap size does not match the piece count")
        if count % 8:
            self._bits[-1] &= (1 << (count % 8)) - 1  # bits past the last piece mean nothing
        self._done = sum(byte.bit_count() for byte in self._bits)

    @classmethod
    def full(cls, count: int) -> "PieceBitmap":
        return cls(count, b"\xff" * ((count + 7) // 8))

    def has(self, index: int) -> bool:
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def add(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(f"piece {index} outside 0..{self.count - 1}")
        if not self.has(index):
            self._bits[index >> 3] |= 1 << (index & 7)
            self._done += 1

    @property
    def done(self) -> int:
        return self._done

    @property
    def complete(self) -> bool:
        return self._done == self.count

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def contiguous_end(self, offset: int, length: int, piece_length: int) -> int:
        """End (exclusive) of the run of present bytes that starts at ``offset``.

        Returns ``offset`` itself when the piece holding it is missing.
        """
        index = offset // piece_length
        while index < self.count and self.has(index):
            index += 1
        return max(offset, min(index * piece_length, length))
