import hashlib
import os

import pytest

from damselfly.core.pieces import (
    DEFAULT_PIECE_LENGTH,
    SMALL_PIECE_LENGTH,
    MAX_PIECE_LENGTH,
    MiB,
    PieceBitmap,
    PieceCheck,
    piece_count,
    piece_digest,
    piece_length_for,
    piece_span,
    pieces_covering,
    piece_matches,
)


def test_piece_length_grows_for_very_large_tasks():
    assert piece_length_for(0) == SMALL_PIECE_LENGTH == 256 * 1024
    assert piece_length_for(64 * MiB) == SMALL_PIECE_LENGTH
    assert piece_length_for(64 * MiB + 1) == 512 * 1024
    assert piece_length_for(128 * MiB + 1) == DEFAULT_PIECE_LENGTH == 4 * MiB
    assert piece_length_for(4 * 1024 * MiB) == 4 * MiB
    assert piece_length_for(4 * 1024 * MiB + 1) == 8 * MiB
    assert piece_length_for(10**15) == MAX_PIECE_LENGTH


@pytest.mark.parametrize("length,piece,count", [(0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (12, 4, 3)])
def test_piece_count(length, piece, count):
    assert piece_count(length, piece) == count


def test_piece_span_and_covering():
    assert piece_span(0, 10, 4) == (0, 4)
    assert piece_span(2, 10, 4) == (8, 2)
    with pytest.raises(IndexError):
        piece_span(3, 10, 4)
    assert list(pieces_covering(3, 4, 4)) == [0, 1]
    assert list(pieces_covering(8, 9, 4)) == [2]


def test_bitmap_contiguous_end():
    bitmap = PieceBitmap(3)
    assert bitmap.contiguous_end(0, 10, 4) == 0
    bitmap.add(0)
    bitmap.add(2)
    assert bitmap.contiguous_end(0, 10, 4) == 4
    assert bitmap.contiguous_end(2, 10, 4) == 4
    assert bitmap.contiguous_end(5, 10, 4) == 5
    assert bitmap.contiguous_end(9, 10, 4) == 10
    bitmap.add(1)
    assert bitmap.complete and bitmap.done == 3
    assert bitmap.contiguous_end(0, 10, 4) == 10


def test_bitmap_round_trip_and_bounds():
    bitmap = PieceBitmap(10)
    for i in (0, 7, 9):
        bitmap.add(i)
    bitmap.add(7)
    copy = PieceBitmap(10, bitmap.to_bytes())
    assert [i for i in range(10) if copy.has(i)] == [0, 7, 9] and copy.done == 3
    with pytest.raises(IndexError):
        bitmap.add(10)
    with pytest.raises(ValueError):
        PieceBitmap(10, b"\x00")
    assert PieceBitmap.full(9).complete


def test_full_bitmap_and_bits_past_the_last_piece():
    assert PieceBitmap.full(10).done == 10 and PieceBitmap.full(16).complete
    stray = PieceBitmap(3, b"\xff")  # a peer's bitmap with garbage past piece 2
    assert stray.done == 3 and stray.complete and stray.to_bytes() == b"\x07"


def test_piece_digests_name_their_algorithm_and_older_bare_sha256_still_verifies():
    data = b"piece bytes" * 1000
    digest = piece_digest(data)
    assert digest.startswith("blake3:") and len(digest) == len("blake3:") + 64
    assert piece_matches(data, digest)
    assert not piece_matches(data + b"!", digest)
    assert piece_matches(data, hashlib.sha256(data).hexdigest())  # written by earlier versions
    assert not piece_matches(data, "md5:" + hashlib.md5(data).hexdigest())  # unknown: never a match


def test_a_piece_check_fed_in_parts_equals_one_over_the_whole():
    data = bytes(range(256)) * 4096
    check = PieceCheck(piece_digest(data))
    for start in range(0, len(data), 300_000):
        check.update(memoryview(data)[start:start + 300_000])
    assert check.matches()
    with pytest.raises(ValueError, match="unknown piece digest algorithm"):
        PieceCheck("crc32:1234")


def test_a_piece_check_without_a_digest_yet_checks_the_one_named_after_the_bytes():
    data = os.urandom(1000)
    check = PieceCheck().update(data)
    assert check.matches(piece_digest(data))
    assert not check.matches(piece_digest(data + b"x"))
    assert not check.matches(hashlib.sha256(data).hexdigest()), "hashed as this version names pieces, not as sha256"
