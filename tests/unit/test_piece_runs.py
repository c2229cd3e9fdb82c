"""Runs of consecutive pieces in one request: what a parent sends, what is left after a
partial run, and how far a waiting reader lets a download ask ahead."""

import asyncio
from pathlib import Path

from damselfly.core.oci import Digest
from damselfly.network.fetch import PieceRequest
from damselfly.core.wire import MAX_RUN_PIECES
from damselfly.network.policy import run_limit
from damselfly.network.swarm import rest_of_run
from damselfly.storage.task import Task
from damselfly.upload.server import held_run

DIGEST = Digest.parse("sha256:" + "0" * 64)


def task_holding(tmp_path: Path, *pieces: int, count: int = 6) -> Task:
    task = Task(DIGEST, 4 * count - 1, tmp_path / "t", piece_length=4)  # the last piece is 3 bytes
    for index in pieces:
        task.bitmap.add(index)
    return task


def test_a_parent_sends_the_asked_piece_and_the_held_ones_after_it_up_to_a_gap(tmp_path):
    task = task_holding(tmp_path, 0, 1, 2, 4)
    assert held_run(task, 0, 8) == range(0, 3)
    assert held_run(task, 0, 2) == range(0, 2)
    assert held_run(task, 4, 8) == range(4, 5)
    assert held_run(task, 4, 1) == range(4, 5)


def test_a_parent_sends_the_rest_of_the_run_it_is_getting_but_never_the_unchecked_last(tmp_path):
    task = task_holding(tmp_path, 0)
    task.fetch_started(range(0, 3))
    task.fetch_started(range(3, 6))
    assert held_run(task, 0, 8) == range(0, 3), "piece 3 comes in another request"
    assert held_run(task, 1, 1) == range(1, 2)
    assert held_run(task, 4, 8) == range(4, 5), "piece 5 is the last: it waits for the blob's check"
    task.fetch_ended(range(0, 3))
    assert held_run(task, 0, 8) == range(0, 1)


def test_a_run_stops_at_the_blobs_end(tmp_path):
    task = task_holding(tmp_path, *range(6))
    assert held_run(task, 3, 64) == range(3, 6)


def test_a_run_never_asks_for_more_pieces_than_a_parent_sends_in_one_body():
    KiB, MiB = 1024, 1024 * 1024
    assert run_limit(256 * KiB, small=False) == 64
    assert run_limit(128 * KiB, small=False) == MAX_RUN_PIECES, "16 MiB of 128 KiB pieces would be 128"
    assert run_limit(4 * MiB, small=False) == 4
    assert run_limit(256 * KiB, small=True) == 4
    assert run_limit(64 * MiB, small=True) == 1

def test_what_is_left_of_a_run_starts_after_the_pieces_that_came():
    request = PieceRequest("http://p", "t", 2, (4, 4, 3), Path("f"), 8, ("a", None, "c"), trust_sent_digest=True)
    rest = rest_of_run(request, 1)
    assert rest is not None
    assert (rest.index, rest.sizes, rest.offset, rest.digests) == (3, (4, 3), 12, (None, "c"))
    assert rest.path == "/pieces/t/3?count=2"
    assert rest_of_run(request, 3) is None
    assert rest_of_run(request, 0) == request


def test_a_waiting_reader_tells_the_download_how_far_its_range_goes(tmp_path):
    async def scenario() -> None:
        task = task_holding(tmp_path)
        whole = asyncio.create_task(task.readable_end(4, stall_timeout=5, until=17))
        single = asyncio.create_task(task.readable_end(8, stall_timeout=5))
        await asyncio.sleep(0)
        assert task.wanted_until == {1: 4, 2: 2}
        task.pieces_written(4, 12)
        assert await asyncio.wait_for(whole, 1) == 12
        assert await asyncio.wait_for(single, 1) == 12
        assert task.wanted_until == {} and not task.wanted

    asyncio.run(scenario())
