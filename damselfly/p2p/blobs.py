"""The blob service: "give me these bytes of this digest".

The mirror asks for a digest; the service answers from the local store, by joining a
download already in flight, or by starting one from a source. Today the only source is
the origin registry; the P2P network plugs in as another source behind the same call.
However many callers ask for one digest at once, the source sees one download.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, BinaryIO, Callable, Protocol

from damselfly.lib.waiting import within
from damselfly.lib.oci import Digest
from damselfly.lib.units import format_size
from damselfly.p2p.pieces import SMALL_BLOB, piece_digest, piece_length_for, piece_matches
from damselfly.p2p.rangefill import RangeFill
from damselfly.p2p.store import BlobMeta, BlobStore, Partial, StoredBlob
from damselfly.p2p.task import Task, TaskFailed
from damselfly.p2p.writer import CopySource, copy_into_task, file_digest

log = logging.getLogger(__name__)
CHECKPOINT_INTERVAL = 0.5  # seconds between checkpoints of a resumable download


@dataclass(frozen=True)
class Origin:
    """Where a caller says the blob lives, and the credentials it presented."""

    registry: str
    repository: str
    authorization: str | None = None


class SourceRefused(Exception):
    """The source answered with a client-facing status (401, 403, 404...) to pass back."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"source answered {status}")
        self.status = status
        self.headers = headers
        self.body = body


class SourceUnavailable(Exception):
    """The source cannot be reached or failed: the caller gets 502 or 504 with the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class SourceStream(CopySource, Protocol):
    """A download in progress, read by a worker thread (``readinto`` raises SourceUnavailable)."""

    length: int


class BlobSource(Protocol):
    async def open_blob(self, origin: Origin, digest: Digest, span: tuple[int, int] | None = None) -> SourceStream:
        """Start a download of the blob or of ``span`` (start, length); raise SourceRefused or SourceUnavailable."""

    async def blob_length(self, origin: Origin, digest: Digest) -> int:
        """Confirm the caller may fetch the blob, and learn its length (a HEAD)."""


class PeerNetwork(Protocol):
    """The P2P side of a daemon, as the blob service sees it."""

    is_seed: bool

    async def download(self, task: Task, origin: Origin) -> str:
        """Fill ``task`` from parents (or the origin when told to); return the blob's hex digest."""

    def publish(self, task: Task, origin: Origin) -> None:
        """Offer a task this node downloads from the origin to the network (seed peers)."""

    def finished(self, task: Task, success: bool, reason: str = "") -> None:
        """Tell the network how the task ended here."""

    def seed_failed(self, digest: str, reason: str) -> None:
        """Tell the network this seed could not start a task it accepted."""


class BlobEvents(Protocol):
    """What the service reports, so metrics stay out of its logic."""

    def cache_hit(self) -> None: ...
    def cache_miss(self) -> None: ...
    def source_bytes(self, n: int) -> None: ...
    def download_failed(self, reason: str) -> None: ...


class BlobReader:
    """One caller's view of a blob: its length and its bytes as they become readable."""

    def __init__(self, service: "BlobService", task: Task, *, protected: bool, started_here: bool,
                 from_cache: bool) -> None:
        self._service = service
        self.task = task
        self.protected = protected
        self.started_here = started_here
        self.from_cache = from_cache
        self.file: BinaryIO = open(task.path, "rb")  # held open: a later rename or eviction cannot cut it

    @property
    def length(self) -> int:
        return self.task.length

    @property
    def digest(self) -> Digest:
        return self.task.digest

    async def spans(self, first: int, last: int) -> AsyncIterator[tuple[int, int]]:
        """(offset, count) runs of verified bytes covering ``first..last``, in order."""
        whole = first == 0 and last == self.task.length - 1
        self.task.whole_readers += whole
        try:
            position = first
            while position <= last:
                end = await self.task.readable_end(position, self._service.stall_timeout, last)
                count = min(end, last + 1) - position
                yield position, count
                position += count
        finally:
            self.task.whole_readers -= whole

    def close(self) -> None:
        self.file.close()


class BlobService:
    def __init__(self, store: BlobStore, source: BlobSource, events: BlobEvents,
                 stall_timeout: float = 60.0, network: "PeerNetwork | None" = None) -> None:
        self.network = network
        self.store = store
        store.in_use = self.in_use
        self.source = source
        self.events = events
        self.stall_timeout = stall_timeout
        self._tasks: dict[str, Task] = {}
        self._readers: dict[str, int] = {}  # open readers per digest
        self._task_protected: dict[str, bool] = {}
        self._starting: dict[str, asyncio.Future[Task]] = {}
        self._downloads: dict[str, asyncio.Task[None]] = {}
        self._committing: set[str] = set()  # verified downloads being flushed and stored
        self._task_started = asyncio.Event()
        self._resumable: set[str] = set()  # downloads from peers: checkpointed, kept at shutdown
        self._relaid: dict[str, dict[int, str]] = {}  # piece digests of blobs stored under an earlier piece rule
        self._checkpoints: set[str] = set()  # checkpoint writes scheduled
        # Threads that copy origin downloads: their own pool, so long copies never starve to_thread.
        self._copiers = ThreadPoolExecutor(32, thread_name_prefix="blob-copy")

    @contextlib.asynccontextmanager
    async def open(self, digest: Digest, origin: Origin, ranged: bool = False) -> AsyncIterator[BlobReader]:
        """A reader for ``digest``: from the store, a download in flight, or a new download.

        ``ranged``: the caller reads a range; a download it starts is marked as read in ranges.
        """
        reader = await self._open(digest, origin, ranged)
        try:
            yield reader
        finally:
            reader.close()
            self._release(reader)

    async def _open(self, digest: Digest, origin: Origin, ranged: bool) -> BlobReader:
        key = str(digest)
        for _ in range(3):  # a refused start by another caller's credentials: try with ours
            stored = self.store.lookup(digest)
            if stored is not None:
                self.events.cache_hit()
                return self._stored_reader(stored)
            task = self._tasks.get(key)
            if task is not None:
                self.events.cache_hit()
                return self._task_reader(task, started_here=False)
            starting = self._starting.get(key)
            if starting is None:
                self.events.cache_miss()
                return await self._start(digest, origin, ranged)
            try:
                await asyncio.shield(starting)
            except SourceRefused:
                continue
        raise SourceUnavailable(502, f"could not start a download of {digest}")

    def _stored_reader(self, stored: StoredBlob) -> BlobReader:
        task = Task(stored.digest, stored.meta.length, stored.path, complete=True, piece_length=stored.meta.piece_length)
        return self._reader(task, protected=stored.meta.protected, started_here=False, from_cache=True)

    def _task_reader(self, task: Task, *, started_here: bool) -> BlobReader:
        return self._reader(task, protected=self._task_protected[str(task.digest)], started_here=started_here,
                            from_cache=False)

    def _reader(self, task: Task, **kwargs: bool) -> BlobReader:
        reader = BlobReader(self, task, **kwargs)
        key = str(task.digest)
        self._readers[key] = self._readers.get(key, 0) + 1
        return reader

    def in_use(self, key: str) -> bool:
        """A blob that a reader holds or a download writes is never evicted."""
        return key in self._readers or key in self._tasks

    def _release(self, reader: BlobReader) -> None:
        key = str(reader.digest)
        self._readers[key] -= 1
        if self._readers[key] == 0:
            del self._readers[key]
            self.store.collect_garbage()

    async def _start(self, digest: Digest, origin: Origin, ranged: bool) -> BlobReader:
        task = await self._begin(digest, origin, ranged)
        return self._task_reader(task, started_here=True)

    async def prefetch(self, digest: Digest, origin: Origin, ranged: bool = False) -> None:
        """Make sure a download of ``digest`` runs (a seed peer told to fetch a task, which
        peers read in ranges if ``ranged``)."""
        key = str(digest)
        if self.store.lookup(digest) is not None or key in self._tasks:
            if self.network is not None:
                self.network.publish(self._tasks.get(key) or self._stored_task(digest), origin)
            return
        if key in self._starting:
            await asyncio.shield(self._starting[key])
            return
        await self._begin(digest, origin, ranged, by_ranges=ranged)

    def local_task(self, digest: Digest) -> Task | None:
        """The task as this node holds it: downloading, or complete in the store."""
        return self._tasks.get(str(digest)) or self._stored_task(digest)

    async def wait_task(self, digest: Digest, timeout: float) -> Task | None:
        """The local task, waiting up to ``timeout`` for a download that is about to start."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (task := self.local_task(digest)) is None:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return None
            starting = self._starting.get(str(digest))
            waiter = asyncio.shield(starting) if starting else self._task_started.wait()
            try:
                if not await within(waiter, left):
                    return None
            except (SourceRefused, SourceUnavailable):
                return self.local_task(digest)
        return task

    def _stored_task(self, digest: Digest) -> Task | None:
        """A stored blob as the network sees it: in the pieces every host derives from its length.

        A blob stored under an earlier piece rule gets its piece digests again (once per run;
        the rule changed for blobs up to 128 MiB, which BLAKE3 reads in milliseconds), so that
        its pieces are the ones peers ask for.
        """
        stored = self.store.lookup(digest)
        if stored is None:
            return None
        task = Task(stored.digest, stored.meta.length, stored.path, complete=True)
        if task.piece_length == stored.meta.piece_length:
            if stored.meta.piece_digests and len(stored.meta.piece_digests) == task.piece_count:
                task.digests = dict(enumerate(stored.meta.piece_digests))
        elif task.length <= SMALL_BLOB:  # larger blobs kept their rule; very old ones go without digests
            key = str(digest)
            if key not in self._relaid:
                log.info("%s was stored in %s pieces, the network now uses %s: digesting it again", key,
                         format_size(stored.meta.piece_length or 0), format_size(task.piece_length))
                self._relaid[key] = _piece_digests(task)
            task.digests = dict(self._relaid[key])
        return task

    async def _begin(self, digest: Digest, origin: Origin, ranged: bool, by_ranges: bool = False) -> Task:
        """Start one download of ``digest``; concurrent callers wait on the same start.

        Without a P2P network, or on a seed peer, the bytes come from the origin registry in
        one GET, in order; with ``by_ranges`` (a seed fetching a task its peers read in
        ranges), in range requests that put the pieces peers wait for first, each byte still
        asked for once. On a peer, the registry is only asked (with the caller's credentials)
        whether the caller may have the blob and how long it is; the bytes come from the
        network. ``ranged``: the first reader reads a range (the scheduler passes it on).
        """
        key = str(digest)
        future: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        self._task_started.set()
        self._task_started = asyncio.Event()
        try:
            if self.network is not None and self.network.is_seed and by_ranges:
                length = await self.source.blob_length(origin, digest)
                fill = lambda task: self._fill_by_ranges(task, origin)  # noqa: E731
            elif self.network is None or self.network.is_seed:
                stream = await self.source.open_blob(origin, digest)
                length = stream.length
                fill = lambda task: self._fill_from_origin(task, stream)  # noqa: E731
            else:
                length = await self.source.blob_length(origin, digest)
                network = self.network
                fill = lambda task: network.download(task, origin)  # noqa: E731
                resumed = await self._resume(digest, length)
        except BaseException as exc:
            del self._starting[key]
            future.set_exception(exc if isinstance(exc, Exception) else SourceUnavailable(502, "cancelled"))
            future.exception()  # joiners may be none; mark it retrieved
            raise
        if self.network is None or self.network.is_seed:
            task = Task(digest, length, self.store.new_incoming(digest))
        else:
            task = resumed or Task(digest, length, self.store.resumable_path(digest))
            self._resumable.add(key)
            task.on_piece = lambda _: self._checkpoint_soon(task)
        task.ranged = ranged
        self._tasks[key] = task
        self._task_protected[key] = origin.authorization is not None
        del self._starting[key]
        future.set_result(task)
        self.store.reserve(task.length)
        if self.network is not None and self.network.is_seed:
            self.network.publish(task, origin)
        download = asyncio.create_task(self._download(task, origin, fill), name=f"download {digest}")
        self._downloads[key] = download
        download.add_done_callback(lambda _: self._downloads.pop(key, None))
        return task

    async def _resume(self, digest: Digest, length: int) -> Task | None:
        """A task with the pieces an earlier run wrote and that still match their digests."""
        found = self.store.partial(digest)
        if found is None:
            return None
        path, partial = found
        if partial.length != length or partial.piece_length != piece_length_for(length):
            self.store.discard(path)  # another blob, or pieces of an earlier rule: start again
            return None
        task = Task(digest, length, path, piece_length=partial.piece_length)
        digests = {int(i): d for i, d in partial.digests.items()}
        good = await asyncio.to_thread(_verified_pieces, task, partial.pieces, digests)
        for index in good:
            task.digests[index] = digests[index]
            task.piece_done(index)
        log.info("resuming %s: %d of %d pieces kept from an earlier run (%d failed their check)", digest,
                 len(good), task.piece_count, len(partial.pieces) - len(good))
        return task

    def _checkpoint_soon(self, task: Task) -> None:
        key = str(task.digest)
        if key not in self._checkpoints:
            self._checkpoints.add(key)
            asyncio.get_running_loop().call_later(CHECKPOINT_INTERVAL, self._checkpoint, task)

    def _checkpoint(self, task: Task) -> None:
        key = str(task.digest)
        self._checkpoints.discard(key)
        if key not in self._resumable or task.complete:
            return
        pieces = [i for i in range(task.piece_count) if task.bitmap.has(i)]
        self.store.checkpoint(task.path, Partial(
            length=task.length, piece_length=task.piece_length, pieces=pieces,
            digests={str(i): task.digests[i] for i in pieces if i in task.digests},
            protected=self._task_protected.get(key, False)))

    async def _fill_from_origin(self, task: Task, stream: SourceStream) -> str:
        """Copy the origin's stream in order on worker threads; return the digest of what it sent."""
        digest = await copy_into_task(self._copiers, stream, task, 0, task.length,
                                      lambda begin, end, _: self.events.source_bytes(end - begin),
                                      task.digest.hasher())
        assert digest is not None  # a copy with a blob hasher returns the blob's digest
        return digest

    async def _fill_by_ranges(self, task: Task, origin: Origin) -> str:
        """Fill the task with range requests, waited-for pieces first; return the file's digest."""
        def open_range(start: int, length: int) -> Awaitable[SourceStream]:
            return self.source.open_blob(origin, task.digest, (start, length))

        await RangeFill(task, open_range, self._copiers, on_bytes=self.events.source_bytes).run()
        return await asyncio.to_thread(file_digest, task.path, task.digest.hasher())

    async def _download(self, task: Task, origin: Origin, fill: Callable[[Task], Awaitable[str]]) -> None:
        key = str(task.digest)
        started = time.monotonic()
        committed = kept = False
        try:
            actual = await fill(task)
            if actual != task.digest.hex:
                raise TaskFailed(f"digest mismatch: source sent {task.digest.algorithm}:{actual}")
            task.release_last()
            self._committing.add(key)  # verified: shutdown lets it reach the store
            await asyncio.to_thread(_fsync, task.path)  # before it counts as stored; readers need not wait
            stored = self.store.commit(task.path, task.digest, BlobMeta(
                length=task.length, protected=self._task_protected[key], registry=origin.registry,
                repository=origin.repository, stored_at=time.time(), piece_length=task.piece_length,
                piece_digests=[task.digests[i] for i in range(task.piece_count)]
                if len(task.digests) == task.piece_count else None))
            committed = True
            task.move_to(stored.path)
            if self.network is not None:
                self.network.finished(task, success=True)
            log.info("cached %s (%s) from %s/%s in %.2fs", key, format_size(task.length),
                     origin.registry, origin.repository, time.monotonic() - started)
        except asyncio.CancelledError:
            task.fail("the daemon is shutting down")
            if key in self._resumable:
                self._checkpoint(task)
                kept = True  # not stored, but kept for the next start to resume
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is reported to readers and logged
            reason = exc.message if isinstance(exc, SourceUnavailable) else str(exc) or exc.__class__.__name__
            log.error("download of %s from %s/%s failed, nothing kept: %s", key, origin.registry,
                      origin.repository, reason)
            self.events.download_failed(reason)
            task.fail(reason)
            if self.network is not None:
                self.network.finished(task, success=False, reason=reason)
        finally:
            self._tasks.pop(key, None)
            self._task_protected.pop(key, None)
            self._committing.discard(key)
            self._resumable.discard(key)
            if not committed:
                self.store.unreserve(task.length)
                if not kept:
                    self.store.discard(task.path)

    async def close(self) -> None:
        """Cancel downloads still receiving (their partial files are dropped); let verified ones be stored."""
        for key, download in list(self._downloads.items()):
            if key not in self._committing:
                download.cancel()
        await asyncio.gather(*self._downloads.values(), return_exceptions=True)
        self._copiers.shutdown(wait=False)


def _piece_digests(task: Task) -> dict[int, str]:
    with open(task.path, "rb") as f:
        return {index: piece_digest(f.read(task.piece_span(index)[1])) for index in range(task.piece_count)}


def _verified_pieces(task: Task, pieces: list[int], digests: dict[int, str]) -> list[int]:
    """The listed pieces whose bytes on disk still match their digests (after a crash, some may not)."""
    good = []
    with open(task.path, "rb") as f:
        for index in pieces:
            if index not in digests or not 0 <= index < task.piece_count:
                continue
            start, size = task.piece_span(index)
            f.seek(start)
            if piece_matches(f.read(size), digests[index]):
                good.append(index)
    return good


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
