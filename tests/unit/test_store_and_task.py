import asyncio
import hashlib
import json
import os

import pytest

from damselfly.core.oci import Digest
from damselfly.storage.store import BlobMeta, BlobStore
from damselfly.storage.task import Task, TaskFailed


def put(store: BlobStore, data: bytes) -> Digest:
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    store.reserve(len(data))
    incoming = store.new_incoming(digest)
    incoming.write_bytes(data)
    store.landed(digest, len(data))
    store.commit(incoming, digest, BlobMeta(len(data), False, "https://r", "repo", 0.0))
    return digest


def test_lru_eviction_between_watermarks_skips_blobs_in_use(tmp_path):
    in_use: set[str] = set()
    evicted = []
    store = BlobStore(tmp_path, quota=1000, high_watermark=0.8, low_watermark=0.4, in_use=in_use.__contains__,
                      on_evict=lambda blob: evicted.append(str(blob.digest)))
    a, b, c = (put(store, bytes([i]) * 300) for i in range(3))  # 900 > 800
    assert evicted == [str(a), str(b)] and store.used_bytes == 300
    store.lookup(c)
    in_use.add(str(c))
    d = put(store, b"d" * 300)
    e = put(store, b"e" * 300)  # 900: c is in use, d is oldest idle
    assert evicted[2:] == [str(d)] and store.lookup(c) is not None and store.lookup(e) is not None


def test_reload_keeps_lru_order_and_drops_partial_and_unexplained_files(tmp_path):
    store = BlobStore(tmp_path, quota=10**6)
    first, second = put(store, b"first"), put(store, b"second")
    store.lookup(first)  # now most recently used
    (tmp_path / "incoming" / "leftover").write_bytes(b"partial")
    stray = tmp_path / "blobs" / "sha256" / "ab" / ("ab" + "0" * 62)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"no metadata")
    os.utime(tmp_path / "blobs/sha256" / second.hex[:2] / (second.hex + ".json"), (1, 1))
    reloaded = BlobStore(tmp_path, quota=10**6)
    assert reloaded.blob_count == 2 and reloaded.used_bytes == len(b"first") + len(b"second")
    assert list(reloaded._blobs) == [str(second), str(first)]
    assert not any((tmp_path / "incoming").iterdir()) and not stray.exists()
    meta = json.loads((tmp_path / "blobs/sha256" / first.hex[:2] / (first.hex + ".json")).read_text())
    assert meta["length"] == 5 and meta["protected"] is False


def test_watermarks_are_checked(tmp_path):
    with pytest.raises(ValueError):
        BlobStore(tmp_path, quota=10, high_watermark=0.5, low_watermark=0.9)


def test_task_readers_wait_for_pieces_and_see_failures(tmp_path):
    async def scenario() -> None:
        digest = Digest.parse("sha256:" + "0" * 64)
        task = Task(digest, 10, tmp_path / "x", piece_length=4)
        waiter = asyncio.create_task(task.readable_end(4, stall_timeout=5))
        await asyncio.sleep(0)
        assert not waiter.done()
        task.pieces_written(0, 6)  # only piece 0 is whole
        await asyncio.sleep(0)
        assert not waiter.done()
        task.pieces_written(4, 8)
        assert await asyncio.wait_for(waiter, 1) == 8
        assert await task.readable_end(0, stall_timeout=1) == 8
        stalled = asyncio.create_task(task.readable_end(8, stall_timeout=5))
        await asyncio.sleep(0)
        task.fail("upstream broke off")
        with pytest.raises(TaskFailed, match="upstream broke off"):
            await asyncio.wait_for(stalled, 1)
        with pytest.raises(TaskFailed, match="no progress"):
            await Task(digest, 10, tmp_path / "y").readable_end(0, stall_timeout=0.01)

    asyncio.run(scenario())


def test_each_listener_of_a_task_comes_and_goes_on_its_own(tmp_path):
    """The blob service, a seed's reporter, a download and a fill from the origin each
    subscribe to a task's events and remove only their own."""
    async def scenario() -> None:
        task = Task(Digest.parse("sha256:" + "0" * 64), 12, tmp_path / "x", piece_length=4)
        landed: list[tuple[str, int]] = []
        task.piece_landed.subscribe(lambda index: landed.append(("store", index)))
        stop_reporting = task.piece_landed.subscribe(lambda index: landed.append(("reporter", index)))
        task.piece_done(0)
        stop_reporting()
        stop_reporting()  # twice is once
        task.piece_done(1)
        task.piece_done(2)  # the last: held until the blob's check
        assert landed == [("store", 0), ("reporter", 0), ("store", 1)]

        woken: list[str] = []
        stop_download = task.reader_waiting.subscribe(lambda: woken.append("download"))
        stop_fill = task.reader_waiting.subscribe(lambda: woken.append("fill"))
        reader = asyncio.create_task(task.readable_end(8, stall_timeout=5))  # waits for the held last piece
        await asyncio.sleep(0)
        stop_fill()
        task.release_last()
        assert await asyncio.wait_for(reader, 1) == 12
        assert woken == ["download", "fill"]
        assert landed[-1] == ("store", 2)
        stop_download()
        await task.readable_end(8, stall_timeout=1)
        assert woken == ["download", "fill"], "a reader that does not wait tells nobody"

    asyncio.run(scenario())


def test_a_piece_on_its_way_is_waited_for_until_it_lands_or_its_request_ends(tmp_path):
    async def scenario() -> None:
        task = Task(Digest.parse("sha256:" + "0" * 64), 16, tmp_path / "x", piece_length=4)
        assert not await task.arrival(0, timeout=5), "not here and not on its way: no wait"
        task.fetch_started(range(0, 3))
        landing = asyncio.create_task(task.arrival(1, timeout=5))
        lost = asyncio.create_task(task.arrival(2, timeout=5))
        await asyncio.sleep(0)
        assert not landing.done() and not lost.done()
        task.piece_done(1)
        assert await asyncio.wait_for(landing, 1)
        assert not lost.done(), "piece 2 is still on its way"
        task.fetch_ended(range(0, 3))
        assert not await asyncio.wait_for(lost, 1), "its request ended without it"
        task.fetch_started(range(3, 4))
        assert not await task.arrival(3, timeout=0.01), "the time ran out"

        reader = asyncio.create_task(task.readable_end(12, stall_timeout=0.3))
        for _ in range(100):  # requests for its piece keep failing: that is no progress
            if reader.done():
                break
            task.fetch_started(range(3, 4))
            await asyncio.sleep(0.02)
            task.fetch_ended(range(3, 4))
        assert reader.done(), "the reader's stall timeout ran on while requests came and went"
        with pytest.raises(TaskFailed, match="no progress"):
            await reader

    asyncio.run(scenario())

def test_incoming_keeps_only_resumable_downloads_with_a_checkpoint(tmp_path):
    from damselfly.storage.store import Partial

    store = BlobStore(tmp_path, quota=10**6)
    digest = Digest.parse("sha256:" + "ab" * 32)
    resumable = store.resumable_path(digest)
    resumable.write_bytes(b"x" * 8)
    store.checkpoint(resumable, Partial(length=8, piece_length=4, pieces=[0], digests={"0": "d"}, protected=False))
    orphan = store.resumable_path(Digest.parse("sha256:" + "cd" * 32))  # no checkpoint
    temporary = store.new_incoming(digest)
    reopened = BlobStore(tmp_path, quota=10**6)
    assert resumable.exists() and not orphan.exists() and not temporary.exists()
    path, partial = reopened.partial(digest)
    assert path == resumable and partial.pieces == [0] and partial.digests == {"0": "d"}
    reopened.discard(path)
    assert reopened.partial(digest) is None and not any((tmp_path / "incoming").iterdir())


def test_a_blob_stored_under_an_earlier_piece_rule_is_offered_in_todays_pieces(tmp_path):
    """Before 256 KiB pieces, a 1 MiB blob was one 4 MiB piece: peers now ask for 4 pieces."""
    from damselfly.blobs.service import BlobService
    from damselfly.core.pieces import piece_digest

    store = BlobStore(tmp_path, quota=10**9)
    data = os.urandom(1024 * 1024)
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    incoming = store.new_incoming(digest)
    incoming.write_bytes(data)
    store.commit(incoming, digest, BlobMeta(length=len(data), protected=False, registry="r", repository="x",
                                            stored_at=0.0, piece_length=4 * 1024 * 1024,
                                            piece_digests=[piece_digest(data)]))
    service = BlobService(store, source=None, sourcing=None, events=None)  # type: ignore[arg-type]
    task = service.local_task(digest)
    assert task is not None and task.complete and task.piece_length == 256 * 1024
    quarter = 256 * 1024
    assert task.digests == {i: piece_digest(data[i * quarter:(i + 1) * quarter]) for i in range(4)}


def test_a_claimed_length_the_cache_cannot_keep_is_refused_without_evicting(tmp_path):
    from damselfly.storage.store import BlobTooLarge

    evicted = []
    store = BlobStore(tmp_path, quota=1000, high_watermark=0.8, low_watermark=0.4,
                      on_evict=lambda blob: evicted.append(blob))
    kept = put(store, b"k" * 300)
    for claimed in (2**40, 1000, 801):  # a tebibyte, the quota, just above the high watermark
        with pytest.raises(BlobTooLarge, match="larger than this cache keeps"):
            store.reserve(claimed)
    assert evicted == [] and store.used_bytes == 300 and store.lookup(kept) is not None
    coming = Digest.parse("sha256:" + "c" * 64)
    store.reserve(800)  # the high watermark itself fits, by evicting the idle blob once its bytes land
    assert evicted == [] and store.used_bytes == 1100
    store.landed(coming, 800)
    assert [str(b.digest) for b in evicted] == [str(kept)] and store.used_bytes == 800


def test_no_room_beside_blobs_in_use_is_store_full_and_evicts_nothing(tmp_path):
    from damselfly.storage.store import StoreFull

    in_use: set[str] = set()
    evicted = []
    store = BlobStore(tmp_path, quota=1000, high_watermark=0.8, low_watermark=0.4, in_use=in_use.__contains__,
                      on_evict=lambda blob: evicted.append(str(blob.digest)))
    held, idle = put(store, b"h" * 400), put(store, b"i" * 300)
    in_use.add(str(held))
    with pytest.raises(StoreFull, match="held by readers and downloads"):
        store.reserve(500)  # 400 held + 500 > 800, even with the idle blob gone
    assert evicted == [] and store.used_bytes == 700 and store.lookup(idle) is not None
    store.reserve(400)  # fits once the idle blob goes: as its bytes land
    store.landed(Digest.parse("sha256:" + "c" * 64), 400)
    assert evicted == [str(idle)] and store.used_bytes == 800


def test_a_claimed_length_evicts_only_for_the_bytes_that_land(tmp_path):
    """Quota 1000, watermarks 900 / 750, four idle blobs of 100: a source claims 750 bytes."""
    evicted = []
    store = BlobStore(tmp_path, quota=1000, high_watermark=0.9, low_watermark=0.75,
                      on_evict=lambda blob: evicted.append(str(blob.digest)))
    kept = [put(store, bytes([i]) * 100) for i in range(4)]
    coming = Digest.parse("sha256:" + "c" * 64)
    store.reserve(750)
    store.landed(coming, 1)  # one byte came, then the source stalled
    assert evicted == [] and store.occupied_bytes == 401
    store.unreserve(coming, 750)  # ... and failed: nothing was evicted for it
    assert evicted == [] and store.used_bytes == store.occupied_bytes == 400 and store.blob_count == 4

    store.reserve(750)
    store.landed(coming, 600)  # 1000 on disk: down to the low watermark, oldest first
    assert evicted == [str(d) for d in kept[:3]] and store.occupied_bytes == 700
    store.unreserve(coming, 750)
    assert store.used_bytes == store.occupied_bytes == 100 and store.lookup(kept[3]) is not None


def test_discard_leaves_nothing_of_a_failed_commit(tmp_path):
    store = BlobStore(tmp_path, quota=10**6)
    incoming = store.new_incoming(Digest.parse("sha256:" + "ef" * 32))
    incoming.with_name(incoming.name + ".json").write_text("{")  # metadata a full disk cut short
    store.discard(incoming)
    assert not any((tmp_path / "incoming").iterdir())


@pytest.mark.parametrize("start,first,last,expected", [
    (0, 0, 9, b"abcdefghij"), (10, 0, 9, b""), (5, 0, 6, b"ab"), (0, 3, 4, b"de"), (4, 0, 100, b"abcdefghij")])
def test_within_range(start, first, last, expected):
    from damselfly.blobs.service import within_range

    assert bytes(within_range(start, bytearray(b"abcdefghij"), first, last)) == expected


class _ListStream:
    """A source stream over bytes, read as a registry response is."""

    def __init__(self, data: bytes) -> None:
        self.data, self.length, self.closed = memoryview(data), len(data), False

    def readinto(self, buffer: memoryview) -> int:
        count = min(len(buffer), len(self.data), 100_000)
        buffer[:count] = self.data[:count]
        self.data = self.data[count:]
        return count

    def abort(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _Events:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def source_bytes(self, n: int) -> None:
        pass

    def download_failed(self, reason: str) -> None:
        self.failures.append(reason)


@pytest.mark.parametrize("first,last", [(500, None), (1000, 2999)])  # bytes before 500 went from the file
def test_an_uncached_stream_holds_its_last_bytes_until_the_whole_blob_matched(tmp_path, first, last):
    """A right blob is sent whole (or the range of it); a wrong one stops short of its end,
    the part that would complete the response held back, and is reported."""
    from damselfly.blobs.service import BlobService

    data = os.urandom(3 * 1024 * 1024 + 7)
    last = len(data) - 1 if last is None else last
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    events = _Events()
    store = BlobStore(tmp_path, quota=10**9)
    service = BlobService(store, source=None, sourcing=None, events=events)  # type: ignore[arg-type]

    async def read(stream: _ListStream, start: int) -> tuple[bytes, BaseException | None]:
        hasher = digest.hasher()
        hasher.update(data[:start])
        sent = bytearray()
        try:
            async for part in service._verified(stream, hasher, digest, len(data), start, first, last):
                sent += part
        except TaskFailed as exc:
            return bytes(sent), exc
        return bytes(sent), None

    async def scenario() -> None:
        good = _ListStream(data[500:])
        assert await read(good, 500) == (data[first:last + 1], None) and good.closed
        corrupt = bytearray(data)
        corrupt[-5] ^= 0xFF
        bad = _ListStream(bytes(corrupt[500:]))
        sent, failure = await read(bad, 500)
        assert isinstance(failure, TaskFailed) and "digest mismatch" in str(failure) and bad.closed
        assert len(sent) < last + 1 - first and data[first:last + 1].startswith(sent)
        short = _ListStream(data[500:-10])
        short.length = len(data) - 500
        sent, failure = await read(short, 500)
        assert "closed after" in str(failure) and len(sent) < last + 1 - first

    asyncio.run(scenario())
    assert len(events.failures) == 1 and events.failures[0].startswith("digest mismatch")


@pytest.mark.parametrize("caller, resumes", [
    (("https://private.example", "team/app", "Bearer t"), True),
    (("https://yes.example", "team/app", None), False),  # another registry vouched for an anonymous caller
    (("https://private.example", "other/app", "Bearer t"), False),
    (("https://private.example", "team/app", None), False),
])
def test_a_protected_partial_resumes_only_for_a_caller_of_its_own_origin(tmp_path, caller, resumes):
    from damselfly.core.oci import Origin
    from damselfly.blobs.service import BlobService
    from damselfly.core.pieces import piece_digest, piece_length_for
    from damselfly.storage.store import Partial

    data = os.urandom(3 * 256 * 1024)
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    store = BlobStore(tmp_path, quota=10**9)
    path = store.resumable_path(digest)
    path.write_bytes(data[: 256 * 1024])
    store.checkpoint(path, Partial(length=len(data), piece_length=piece_length_for(len(data)), pieces=[0],
                                   digests={"0": piece_digest(data[: 256 * 1024])}, protected=True,
                                   origin="private.example/team/app"))
    service = BlobService(store, source=None, sourcing=None, events=_Events())  # type: ignore[arg-type]
    task = asyncio.run(service.resume(digest, len(data), Origin(*caller)))
    assert (task is not None and task.bitmap.has(0)) == resumes
    assert (store.partial(digest) is not None) == resumes, "a partial it does not resume is not kept"


def test_a_caller_of_another_registry_gets_no_byte_of_a_download_before_its_check(tmp_path):
    """A registry that sends other bytes under a digest started the download: a caller naming
    the right registry must not get a range of them as a complete answer."""
    from damselfly.core.oci import Origin
    from damselfly.blobs.service import BlobReader, BlobService

    data = os.urandom(3 * 256 * 1024)
    digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
    store = BlobStore(tmp_path, quota=10**9)
    service = BlobService(store, source=None, sourcing=None, events=_Events())  # type: ignore[arg-type]

    async def scenario() -> tuple[tuple[int, int], bool, tuple[int, int]]:
        task = Task(digest, len(data), tmp_path / "blob")
        (tmp_path / "blob").write_bytes(data)
        task.piece_done(0)  # the first piece is on disk; the blob is not checked yet
        origin = Origin("https://liar.example", "x/y")
        same = BlobReader(service, digest, len(data), origin, protected=False, started_here=False,
                          from_cache=False, task=task)
        other = BlobReader(service, digest, len(data), origin, protected=False, started_here=False,
                           from_cache=False, task=task, check_first=True)
        got_same = await asyncio.wait_for(anext(same._spans(task, 0, 15)), 1)
        waiting = asyncio.ensure_future(anext(other._spans(task, 0, 15)))
        early, _ = await asyncio.wait({waiting}, timeout=0.3)
        for index in range(1, task.piece_count):
            task.piece_done(index)
        task.release_last()  # the whole blob matched its digest
        after_check = await asyncio.wait_for(waiting, 1)
        for reader in (same, other):
            reader.close()
        return got_same, bool(early), after_check

    got_same, early, after_check = asyncio.run(scenario())
    assert got_same == (0, 16) and not early and after_check == (0, 16)


def test_bytes_a_copy_from_the_origin_wrote_may_be_sent_before_their_piece_is_whole(tmp_path):
    async def scenario() -> None:
        task = Task(Digest.parse("sha256:" + "0" * 64), 11, tmp_path / "x", piece_length=4)  # pieces 4, 4, 3
        task.fetch_started(range(0, 3))
        assert task.sendable_end(0) == 0
        waiting = asyncio.create_task(task.more(0, 0, timeout=5))
        await asyncio.sleep(0)
        assert task.pieces_written(0, 2) == range(0, 0)
        assert await asyncio.wait_for(waiting, 1) and task.sendable_end(0) == 2
        assert task.pieces_written(2, 6) == range(0, 1)
        assert task.bitmap.has(0) and task.sendable_end(0) == 4 and task.sendable_end(1) == 6
        task.pieces_written(6, 10)
        assert task.sendable_end(2) == 8, "the last piece waits for the whole blob's check, every byte of it"
        assert not await task.more(2, 8, timeout=0.01), "the time ran out"
        task.pieces_written(10, 11)
        task.fetch_ended(range(0, 3))
        held = asyncio.create_task(task.more(2, 8, timeout=5))
        await asyncio.sleep(0)
        assert not held.done(), "held for the blob's check: still to come"
        task.release_last()
        assert await asyncio.wait_for(held, 1) and task.sendable_end(2) == 11
        other = Task(Digest.parse("sha256:" + "1" * 64), 11, tmp_path / "y", piece_length=4)
        other.fetch_started(range(0, 3))
        other.pieces_written(0, 2)
        other.fetch_ended(range(0, 3))
        assert other.sendable_end(0) == 0 and not await other.more(0, 0, timeout=5), "its request ended without it"

    asyncio.run(scenario())
