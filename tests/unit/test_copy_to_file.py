"""Copying a download into a task's file: pieces are announced as their last byte arrives."""

from __future__ import annotations

import os
import queue
import threading

import pytest

from damselfly.core.pieces import piece_digest
from damselfly.storage.writer import copy_to_file

PIECE = 4096


class TrickleSource:
    """A blocking source that hands out what the test has put in, and waits for more."""

    def __init__(self) -> None:
        self.chunks: queue.Queue[bytes] = queue.Queue()
        self.left = b""

    def readinto(self, buffer: memoryview) -> int:
        if not self.left:
            self.left = self.chunks.get(timeout=10)
        count = min(len(buffer), len(self.left))
        buffer[:count] = self.left[:count]
        self.left = self.left[count:]
        return count


def test_a_piece_is_announced_before_the_bytes_after_it_arrive(tmp_path):
    """A seed serves a piece as soon as it is written: a range of several pieces must not
    wait for a whole copy buffer (1 MiB) before its first piece counts."""
    data = bytes(range(256)) * (4 * PIECE // 256)
    path = tmp_path / "blob"
    path.write_bytes(b"\0" * len(data))
    source, digests = TrickleSource(), {}
    reached: list[int] = []
    first_piece = threading.Event()

    def on_written(offset: int) -> None:
        reached.append(offset)
        if offset >= PIECE:
            first_piece.set()

    copying = threading.Thread(target=copy_to_file, args=(source, path, 0, len(data), PIECE, digests, on_written),
                               kwargs={"piece_by_piece": True})
    copying.start()
    try:
        source.chunks.put(data[: PIECE + 100])  # the first piece and a little of the second
        assert first_piece.wait(5), f"the first piece was not announced before the rest came (reached {reached})"
        assert digests[0] == piece_digest(data[:PIECE])
    finally:
        source.chunks.put(data[PIECE + 100:])
        copying.join(10)
    assert reached[-1] == len(data)
    assert path.read_bytes() == data
    assert [digests[i] for i in range(4)] == [piece_digest(data[i * PIECE:(i + 1) * PIECE]) for i in range(4)]


@pytest.mark.parametrize("piece_by_piece", [True, False], ids=["piece-by-piece", "whole-buffers"])
def test_a_range_from_a_later_piece_to_a_short_last_piece(tmp_path, piece_by_piece: bool):
    data = os.urandom(3 * PIECE + PIECE // 2)
    path = tmp_path / "blob"
    path.write_bytes(b"\0" * len(data))
    source, digests, reached = TrickleSource(), {}, []
    source.chunks.put(data[PIECE:])
    copy_to_file(source, path, PIECE, len(data) - PIECE, PIECE, digests, reached.append, piece_by_piece=piece_by_piece)
    # one report per piece, the short one too; or one for the buffer that holds them all
    assert reached == ([2 * PIECE, 3 * PIECE, len(data)] if piece_by_piece else [len(data)])
    assert digests == {i: piece_digest(data[i * PIECE:(i + 1) * PIECE]) for i in (1, 2, 3)}
    assert path.read_bytes()[PIECE:] == data[PIECE:]
