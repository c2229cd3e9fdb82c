"""Which pieces a range fill asks the origin for next, and when a task may fetch what no reader waits for."""

from __future__ import annotations

import time

from damselfly.core.oci import Digest
from damselfly.blobs.rangefill import next_run
from damselfly.storage.task import Task

DIGEST = Digest.parse("sha256:" + "0" * 64)


def fetchable_except(*taken: int):
    return lambda i: i not in taken


def test_a_waited_for_piece_comes_first_with_its_neighbour():
    assert next_run(10, fetchable_except(), wanted={7: 7, 3: 3}, urgent_pieces=2, run_pieces=8, rest=True) == (3, 2)


def test_a_waited_for_piece_comes_with_the_rest_of_its_readers_range_in_one_run():
    assert next_run(20, fetchable_except(), wanted={3: 6}, urgent_pieces=2, run_pieces=8, rest=False) == (3, 4)
    assert next_run(20, fetchable_except(5), wanted={3: 6}, urgent_pieces=2, run_pieces=8, rest=False) == (3, 2)
    assert next_run(20, fetchable_except(), wanted={3: 19}, urgent_pieces=2, run_pieces=8, rest=False) == (3, 8)


def test_a_waited_for_piece_already_in_flight_is_not_asked_for_again():
    assert next_run(10, fetchable_except(3), wanted={3: 3}, urgent_pieces=2, run_pieces=8, rest=True) == (0, 3)


def test_the_rest_goes_in_order_and_stops_at_a_held_piece():
    assert next_run(10, fetchable_except(0, 4), wanted={}, urgent_pieces=2, run_pieces=8, rest=True) == (1, 3)
    assert next_run(10, fetchable_except(*range(6)), wanted={}, urgent_pieces=2, run_pieces=3, rest=True) == (6, 3)


def test_a_run_ends_at_the_last_piece():
    assert next_run(10, fetchable_except(*range(8)), wanted={9: 9}, urgent_pieces=4, run_pieces=8, rest=True) == (9, 1)


def test_nothing_when_the_rest_must_wait_or_all_is_taken():
    assert next_run(10, fetchable_except(), wanted={}, urgent_pieces=2, run_pieces=8, rest=False) is None
    assert next_run(3, fetchable_except(0, 1, 2), wanted={1: 1}, urgent_pieces=2, run_pieces=8, rest=True) is None


def test_the_rest_of_a_blob_read_in_ranges_waits_for_its_readers_to_pause(tmp_path):
    task = Task(DIGEST, 40, tmp_path / "blob", piece_length=4)
    task.last_wanted = time.monotonic() - 10
    assert task.rest_may_follow(0.5), "nobody read for a while"
    task.wanted[3] += 1
    assert not task.rest_may_follow(0.5), "a reader waits"
    task.wanted.clear()
    task.last_wanted = time.monotonic()
    assert not task.rest_may_follow(0.5), "a reader was served a moment ago"
    task.whole_readers = 1
    assert task.rest_may_follow(0.5), "a reader streams the whole blob"


def test_a_reader_waiting_for_the_held_last_piece_lets_the_rest_come(tmp_path):
    task = Task(DIGEST, 40, tmp_path / "blob", piece_length=4)
    task.piece_done(9)  # held: the blob's digest is not checked yet
    task.wanted[9] += 1
    task.last_wanted = time.monotonic()
    assert task.rest_may_follow(0.5), "the last piece needs every other piece first"
