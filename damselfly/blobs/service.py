"""The blob service: "give me these bytes of this digest".

The mirror asks for a digest; the service answers from the local store, by joining a
download already in flight, or by starting one through the node's sourcing (the origin
registry for a mirror or a seed, the P2P network for a peer: see blobs.sourcing).
However many callers ask for one digest at once, the source sees one download.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, BinaryIO, Protocol

from damselfly.lib.waiting import within
from damselfly.core.oci import Digest, Origin, SourceRefused, SourceUnavailable
from damselfly.lib.units import format_size
from damselfly.core.pieces import SMALL_BLOB, piece_digest, piece_length_for, piece_matches
from damselfly.blobs.sourcing import BlobSource, Download, SourceStream, Sourcing
from damselfly.storage.store import BlobMeta, BlobStore, BlobTooLarge, Partial, StoredBlob, StoreFull
from damselfly.storage.task import Task, TaskFailed
from damselfly.storage.writer import BUFFER_SIZE, hash_file, read_hashed
from damselfly.core.wire import origin_key

log = logging.getLogger(__name__)
CHECKPOINT_INTERVAL = 0.5  # seconds between checkpoints of a resumable download


def stored_origin(stored: StoredBlob) -> Origin:
    """Where a stored blob came from (no credentials are stored): what its access is checked against."""
    return Origin(stored.meta.registry, stored.meta.repository)


class NoRoom(SourceUnavailable):
    """The store cannot take the blob now: its callers read it from the source, uncached.

    ``reason``: store_full (no room beside blobs in use) or disk_full (not even for its file).
    ``stream``: the download the starting caller had already opened, for it alone to read.
    """

    def __init__(self, message: str, reason: str, stream: SourceStream | None = None) -> None:
        super().__init__(507, message)
        self.reason = reason
        self.stream = stream


class BlobEvents(Protocol):
    """What the service reports, so metrics stay out of its logic."""

    def cache_hit(self) -> None: ...
    def cache_miss(self) -> None: ...
    def source_bytes(self, n: int) -> None: ...
    def download_failed(self, reason: str) -> None: ...
    def uncached_stream(self, reason: str) -> None: ...


@dataclass(frozen=True)
class FileSpan:
    """Bytes of a reader's file to send."""

    offset: int
    count: int


class BlobReader:
    """One caller's view of a blob: its length, where it comes from, and its bytes as they
    become readable.

    A reader of a task reads the task's file. One the store had no room for reads its
    ``stream`` from the source instead, uncached; so does a task's reader from where the
    file stopped, when the disk filled under the download.
    """

    def __init__(self, service: "BlobService", digest: Digest, length: int, origin: Origin, *, protected: bool,
                 started_here: bool, from_cache: bool, task: Task | None = None,
                 stream: SourceStream | None = None, check_first: bool = False) -> None:
        self._service = service
        # The caller named another registry than the download's: it gets no byte before the
        # whole blob matched its digest here (that registry may be lying about the blob).
        self.check_first = check_first
        self.digest = digest
        self.length = length
        self.origin = origin  # where the blob comes from, with the credentials it is fetched with
        self.protected = protected
        self.started_here = started_here
        self.from_cache = from_cache
        self.task = task
        self._stream = stream
        # Held open: a later rename or eviction cannot cut it, nor a full disk's discard.
        self.file: BinaryIO | None = open(task.path, "rb") if task is not None else None

    async def body(self, first: int, last: int) -> AsyncIterator[FileSpan | memoryview]:
        """Bytes ``first..last`` in order: runs of the file as they are verified, or bytes
        from the source, checked against the digest before the last of them goes."""
        position = first
        if self.task is not None:
            try:
                async with contextlib.aclosing(self._spans(self.task, first, last)) as spans:
                    async for offset, count in spans:
                        yield FileSpan(offset, count)
                        position = offset + count
                return
            except TaskFailed:
                if not self._service.overflowed(self.task):
                    raise
            # What the file got from the blob's start is sent (what this reader still wants of it)
            # and hashed from the file; the source sends the rest.
            start = min(self.task.bitmap.contiguous_end(0, self.length, self.task.piece_length), last + 1)
            self._service.events.uncached_stream("disk_full")
            log.warning("the disk filled under the download of %s: a reader goes on uncached, the source "
                        "sending from byte %d", self.digest, start)
            if position < start:
                yield FileSpan(position, start - position)
                position = start
        else:
            start = 0
        if position <= last:
            async with contextlib.aclosing(self._service.read_uncached(self, start, position, last)) as parts:
                async for part in parts:
                    yield part

    async def _spans(self, task: Task, first: int, last: int) -> AsyncIterator[tuple[int, int]]:
        """(offset, count) runs of verified bytes covering ``first..last``, in order."""
        whole = first == 0 and last == task.length - 1
        task.whole_readers += whole
        try:
            if self.check_first and task.length:
                await task.readable_end(task.piece_span(task.piece_count - 1)[0], self._service.stall_timeout,
                                        whole=True)
            position = first
            while position <= last:
                # A range reader (nydus reads a blob's tail first) may have the last piece once
                # it matched its piece digest; a whole-blob reader only after this node's check.
                end = await task.readable_end(position, self._service.stall_timeout, last, whole=whole)
                count = min(end, last + 1) - position
                yield position, count
                position += count
        finally:
            task.whole_readers -= whole

    def take_stream(self) -> SourceStream | None:
        """The source download opened for this reader, if any, now the caller's to close."""
        stream, self._stream = self._stream, None
        return stream

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self._stream is not None:
            self._stream.close()


class BlobService:
    def __init__(self, store: BlobStore, source: BlobSource, sourcing: Sourcing, events: BlobEvents,
                 stall_timeout: float = 60.0) -> None:
        self.store = store
        store.in_use = self.in_use
        self.source = source  # the origin registry: what a reader the store has no room for reads, uncached
        self.sourcing = sourcing  # how downloads get their bytes: the node's role decided it
        self.events = events
        self.stall_timeout = stall_timeout
        self._tasks: dict[str, Task] = {}
        self._readers: dict[str, int] = {}  # open readers per digest
        self._task_origins: dict[str, Origin] = {}  # where each download comes from, with whose credentials
        self._overflowed: weakref.WeakSet[Task] = weakref.WeakSet()  # downloads the full disk stopped
        self._starting: dict[str, asyncio.Future[Task]] = {}
        self._downloads: dict[str, asyncio.Task[None]] = {}
        self._committing: set[str] = set()  # verified downloads being flushed and stored
        self._task_started = asyncio.Event()
        self._resumable: set[str] = set()  # downloads from peers: checkpointed, kept at shutdown
        self._relaid: dict[str, dict[int, str]] = {}  # piece digests of blobs stored under an earlier piece rule
        self._checkpoints: set[str] = set()  # checkpoint writes scheduled
        # Threads that read uncached streams: their own pool, so long reads never starve to_thread.
        self._uncached_readers = ThreadPoolExecutor(32, thread_name_prefix="blob-uncached")

    @contextlib.asynccontextmanager
    async def open(self, digest: Digest, origin: Origin, ranged: bool = False,
                   length: int | None = None) -> AsyncIterator[BlobReader]:
        """A reader for ``digest``: from the store, a download in flight, or a new download.

        ``ranged``: the caller reads a range; a download it starts is marked as read in ranges.
        ``length``: known already (from a checked manifest), for a download the registry cannot size now.
        """
        reader = await self._open(digest, origin, ranged, length)
        try:
            yield reader
        finally:
            reader.close()
            self._release(reader)

    async def _open(self, digest: Digest, origin: Origin, ranged: bool, length: int | None) -> BlobReader:
        key = str(digest)
        for _ in range(3):  # a refused start by another caller's credentials: try with ours
            stored = self.store.lookup(digest)
            if stored is not None:
                self.events.cache_hit()
                return self._stored_reader(stored)
            task = self._tasks.get(key)
            if task is not None:
                self.events.cache_hit()
                return self._task_reader(task, started_here=False, caller=origin)
            starting = self._starting.get(key)
            if starting is None:
                self.events.cache_miss()
                return await self._start(digest, origin, ranged, length)
            try:
                await asyncio.shield(starting)
            except SourceRefused:
                continue
            except NoRoom as full:
                return await self._uncached_reader(digest, origin, full)
        raise SourceUnavailable(502, f"could not start a download of {digest}")

    def _stored_reader(self, stored: StoredBlob) -> BlobReader:
        task = Task(stored.digest, stored.meta.length, stored.path, complete=True, piece_length=stored.meta.piece_length)
        return self._reader(task, stored_origin(stored), protected=stored.meta.protected, started_here=False,
                            from_cache=True)

    def _task_reader(self, task: Task, *, started_here: bool, caller: Origin | None = None) -> BlobReader:
        origin = self._task_origins[str(task.digest)]
        # Registries, not repositories: a registry is trusted for its own blobs, under any name.
        foreign = caller is not None and origin_key(caller.registry, "") != origin_key(origin.registry, "")
        return self._reader(task, origin, protected=origin.protected, started_here=started_here,
                            from_cache=False, check_first=foreign)

    def _reader(self, task: Task, origin: Origin, **kwargs: bool) -> BlobReader:
        reader = BlobReader(self, task.digest, task.length, origin, task=task, **kwargs)
        key = str(task.digest)
        self._readers[key] = self._readers.get(key, 0) + 1
        return reader

    async def _uncached_reader(self, digest: Digest, origin: Origin, full: NoRoom) -> BlobReader:
        """A reader straight from the source (on the caller's own credentials), for a blob
        the store has no room for now: the caller gets it anyway, and nothing is evicted."""
        stream = full.stream or await self.source.open_blob(origin, digest)
        self.events.uncached_stream(full.reason)
        log.warning("%s goes to a caller uncached from %s/%s: %s", digest, origin.registry, origin.repository,
                    full.message)
        return BlobReader(self, digest, stream.length, origin, protected=origin.protected,
                          started_here=True, from_cache=False, stream=stream)

    def protected_download(self, digest: Digest) -> tuple[Task, Origin] | None:
        """A download in flight of a blob fetched with credentials, with where it comes from."""
        key = str(digest)
        origin, task = self._task_origins.get(key), self._tasks.get(key)
        if origin is None or task is None or not origin.protected:
            return None
        return task, origin

    def protected_origin(self, digest: Digest) -> str | None:
        """For a blob fetched with credentials, the ``origin_key`` of where it came from: a
        peer may have its pieces only for a caller confirmed there (None: not protected)."""
        stored = self.store.lookup(digest)
        if stored is not None:
            return origin_key(stored.meta.registry, stored.meta.repository) if stored.meta.protected else None
        origin = self._task_origins.get(str(digest))
        if origin is None or not origin.protected:
            return None
        return origin_key(origin.registry, origin.repository)

    def overflowed(self, task: Task) -> bool:
        """The download of ``task`` stopped because the disk filled: its readers go on uncached."""
        return task in self._overflowed

    async def read_uncached(self, reader: BlobReader, start: int, send_from: int, last: int
                            ) -> AsyncIterator[memoryview]:
        """Bytes ``send_from..last`` of the reader's blob from the source, none stored.

        The first ``start`` bytes, which the reader's file holds, are hashed, not fetched
        again; the rest comes in one request (a range from ``start``), read to the blob's end
        so that the whole blob is checked before the last byte goes.
        """
        hasher = reader.digest.hasher()
        if start:
            assert reader.file is not None  # only a task's reader has bytes of the blob already
            await asyncio.get_running_loop().run_in_executor(self._uncached_readers, hash_file, reader.file.fileno(), start,
                                                             hasher)
        stream = reader.take_stream()
        if stream is None and start < reader.length:
            try:
                stream = await self.source.open_blob(reader.origin, reader.digest, (start, reader.length - start))
            except (SourceRefused, SourceUnavailable) as exc:
                raise TaskFailed(f"the source refused the rest of the blob: {exc}") from None
        async with contextlib.aclosing(self._verified(stream, hasher, reader.digest, reader.length, start,
                                                      send_from, last)) as parts:
            async for part in parts:
                yield part

    async def _verified(self, stream: SourceStream | None, hasher: "hashlib._Hash", digest: Digest, length: int,
                        start: int, send_from: int, last: int) -> AsyncIterator[memoryview]:
        """The bytes ``send_from..last`` of ``stream``, which carries the blob from ``start`` to
        its end (``hasher`` holds the bytes before). Each part goes as it comes, but the final
        one only once the whole blob matched ``digest``: otherwise TaskFailed, and the
        client's response stays short. The stream is closed on every path."""
        loop = asyncio.get_running_loop()
        held: memoryview | None = None
        offset = start
        reading: asyncio.Future[bytearray] | None = None
        try:
            while offset < length:
                assert stream is not None  # bytes are left to read, so a stream was opened for them
                wanted = min(BUFFER_SIZE, length - offset)
                reading = loop.run_in_executor(self._uncached_readers, read_hashed, stream, wanted, hasher)
                try:
                    chunk = await reading
                except SourceUnavailable as exc:
                    raise TaskFailed(exc.message) from None
                if len(chunk) < wanted:
                    raise TaskFailed(f"the source closed after {offset + len(chunk)} of {length} bytes")
                self.events.source_bytes(len(chunk))
                part = within_range(offset, chunk, send_from, last)
                if part:
                    if held is not None:
                        yield held
                    held = part
                offset += len(chunk)
            actual = hasher.hexdigest()
            if actual != digest.hex:
                reason = f"digest mismatch: source sent {digest.algorithm}:{actual}"
                self.events.download_failed(reason)
                raise TaskFailed(reason)
            if held is not None:
                yield held
        finally:
            if stream is not None:
                if reading is not None and not reading.done():  # the caller went away mid-read
                    stream.abort()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(reading, 10)
                stream.close()

    def in_use(self, key: str) -> bool:
        """A blob that a reader holds or a download writes is never evicted."""
        return key in self._readers or key in self._tasks

    def _release(self, reader: BlobReader) -> None:
        if reader.task is None:  # an uncached reader holds nothing in the store
            return
        key = str(reader.digest)
        self._readers[key] -= 1
        if self._readers[key] == 0:
            del self._readers[key]
            self.store.collect_garbage()

    async def _start(self, digest: Digest, origin: Origin, ranged: bool, length: int | None) -> BlobReader:
        try:
            task = await self._begin(digest, origin, ranged, length=length)
        except NoRoom as full:
            return await self._uncached_reader(digest, origin, full)
        return self._task_reader(task, started_here=True)

    async def prefetch(self, digest: Digest, origin: Origin, ranged: bool = False, length: int | None = None) -> None:
        """Make sure a download of ``digest`` runs (a seed peer told to fetch a task, which
        peers read in ranges if ``ranged``; a preheat, which knows the ``length`` from the
        manifest: a peer then need not ask the registry)."""
        key = str(digest)
        if self.store.lookup(digest) is not None or key in self._tasks:
            self.sourcing.offer(self._tasks.get(key) or self._stored_task(digest), origin)
            return
        if key in self._starting:
            await asyncio.shield(self._starting[key])
            return
        try:
            await self._begin(digest, origin, ranged, by_ranges=ranged, length=length)
        except NoRoom as full:
            if full.stream is not None:  # nobody here to read it uncached
                full.stream.close()
            raise

    async def place(self, digest: Digest, origin: Origin, length: int | None = None) -> None:
        """Hold ``digest`` in the store (a preheat): start or join its download, and return
        once it is stored. SourceRefused or SourceUnavailable (with the download's reason) if
        it is not."""
        await self.prefetch(digest, origin, length=length)
        task = self.local_task(digest)
        download = self._downloads.get(str(digest))
        if download is not None:
            await asyncio.shield(download)
        if self.store.lookup(digest) is None:
            reason = task.error if task is not None and task.error else "the download ended without the blob"
            raise SourceUnavailable(502, reason)

    async def keep(self, digest: Digest, body: bytes, origin: Origin) -> None:
        """Hold ``body``, already checked against ``digest``, as that blob, offered to the
        network like a download's: a seed's copy of a manifest, which nodes then fetch
        through P2P while the registry is down. A store without room keeps nothing."""
        if self.store.lookup(digest) is None and str(digest) not in self._tasks:
            try:
                self.store.reserve(len(body))
            except (BlobTooLarge, StoreFull) as exc:
                log.warning("%s not held for the cluster: %s", digest, exc)
                return
            path = self.store.new_incoming(digest)
            try:
                await asyncio.to_thread(_write_synced, path, body)
                task = Task(digest, len(body), path, complete=True)
                self.store.commit(path, digest, BlobMeta(
                    length=len(body), protected=origin.protected, registry=origin.registry,
                    repository=origin.repository, stored_at=time.time(), piece_length=task.piece_length,
                    piece_digests=list(_piece_digests(task).values())))
            except OSError as exc:
                self.store.unreserve(digest, len(body))
                self.store.discard(path)
                log.warning("%s not held for the cluster: %s", digest, exc)
                return
        task = self.local_task(digest)
        if task is not None:
            self.sourcing.offer(task, origin)

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

    async def _begin(self, digest: Digest, origin: Origin, ranged: bool, by_ranges: bool = False,
                     length: int | None = None) -> Task:
        """Start one download of ``digest``; concurrent callers wait on the same start.

        The node's sourcing opens the download (see blobs.sourcing); ``by_ranges``: a seed
        fetches a task its peers read in ranges, the pieces they wait for first. A resumable
        download (a peer's) takes up the pieces an earlier run kept. ``ranged``: the first
        reader reads a range (the scheduler passes it on).

        The store is asked for room once the length is known: a blob larger than it keeps
        is refused (507), one it has no room for now raises NoRoom (read uncached).
        """
        key = str(digest)
        future: asyncio.Future[Task] = asyncio.get_running_loop().create_future()
        self._starting[key] = future
        self._task_started.set()
        self._task_started = asyncio.Event()
        download: Download | None = None
        try:
            download = await self.sourcing.open(digest, origin, by_ranges, length)
            resumed = await self.resume(digest, download.length, origin) if download.resumable else None
            task = self._claim(digest, download, resumed)
        except BaseException as exc:
            del self._starting[key]
            future.set_exception(_for_joiners(exc))
            future.exception()  # joiners may be none; mark it retrieved
            if download is not None and download.stream is not None and not isinstance(exc, NoRoom):
                download.stream.close()
            raise
        if download.resumable:
            self._resumable.add(key)
        task.piece_landed.subscribe(lambda _: self._piece_landed(task))  # for the task's life
        self.store.landed(digest, _written(task))  # the pieces a resumed download kept
        task.ranged = ranged
        self._tasks[key] = task
        self._task_origins[key] = origin
        del self._starting[key]
        future.set_result(task)
        self.sourcing.offer(task, origin)
        running = asyncio.create_task(self._download(task, origin, download), name=f"download {digest}")
        self._downloads[key] = running
        running.add_done_callback(lambda _: self._downloads.pop(key, None))
        return task

    def _claim(self, digest: Digest, download: Download, resumed: Task | None) -> Task:
        """Reserve room for the download and make its task (``resumed``, or one on a new file:
        kept across restarts if resumable). The stream the download opened goes with NoRoom."""
        length, stream = download.length, download.stream
        try:
            self.store.reserve(length)
        except BlobTooLarge as exc:
            raise SourceUnavailable(507, f"{digest} not fetched: {exc}") from None
        except StoreFull as exc:
            raise NoRoom(str(exc), "store_full", stream) from None
        if resumed is not None:
            return resumed
        try:
            return Task(digest, length, self.store.resumable_path(digest) if download.resumable
                        else self.store.new_incoming(digest))
        except OSError as exc:
            self.store.unreserve(digest, length)
            if _out_of_space(exc):
                raise NoRoom(f"no room on the store's disk: {exc.strerror}", "disk_full", stream) from None
            raise

    async def resume(self, digest: Digest, length: int, origin: Origin) -> Task | None:
        """A task with the pieces an earlier run wrote and that still match their digests.

        A partial of a blob fetched with credentials resumes only for a caller whom the same
        registry and repository just accepted (``blob_length`` asked them, with the caller's
        credentials): otherwise its pieces would reach a caller another registry vouched for.
        """
        found = self.store.partial(digest)
        if found is None:
            return None
        path, partial = found
        if partial.length != length or partial.piece_length != piece_length_for(length):
            self.store.discard(path)  # another blob, or pieces of an earlier rule: start again
            return None
        if partial.protected and (not origin.protected
                                  or partial.origin != origin_key(origin.registry, origin.repository)):
            log.info("not resuming %s: it was fetched with credentials from elsewhere; starting again", digest)
            self.store.discard(path)
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

    def _piece_landed(self, task: Task) -> None:
        """Per piece: the store weighs the bytes now on disk (evicting for them, never for a
        claimed length), and a resumable download is checkpointed soon. A piece that lands
        after its download ended (a fetch thread's late word) counts for nothing."""
        key = str(task.digest)
        if self._tasks.get(key) is not task:
            return
        self.store.landed(task.digest, _written(task))
        if key in self._resumable:
            self._checkpoint_soon(task)

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
            protected=key in self._task_origins and self._task_origins[key].protected,
            origin=origin_key(self._task_origins[key].registry, self._task_origins[key].repository)
            if key in self._task_origins else ""))

    async def _download(self, task: Task, origin: Origin, download: Download) -> None:
        key = str(task.digest)
        started = time.monotonic()
        committed = kept = False
        try:
            actual = await download.fill(task)
            if actual != task.digest.hex:
                raise TaskFailed(f"digest mismatch: source sent {task.digest.algorithm}:{actual}")
            task.release_last()
            self._committing.add(key)  # verified: shutdown lets it reach the store
            await asyncio.to_thread(_fsync, task.path)  # before it counts as stored; readers need not wait
            stored = self.store.commit(task.path, task.digest, BlobMeta(
                length=task.length, protected=origin.protected, registry=origin.registry,
                repository=origin.repository, stored_at=time.time(), piece_length=task.piece_length,
                piece_digests=[task.digests[i] for i in range(task.piece_count)]
                if len(task.digests) == task.piece_count else None))
            committed = True
            task.move_to(stored.path)
            self.sourcing.finished(task, success=True)
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
            if _out_of_space(exc):
                self._overflowed.add(task)  # before its readers hear of it
                log.warning("the store's disk filled during the download of %s from %s/%s: nothing kept, its "
                            "readers go on uncached (%s)", key, origin.registry, origin.repository, reason)
            else:
                log.error("download of %s from %s/%s failed, nothing kept: %s", key, origin.registry,
                          origin.repository, reason)
                self.events.download_failed(reason)
            task.fail(reason)
            self.sourcing.finished(task, success=False, reason=reason)
        finally:
            self._tasks.pop(key, None)
            self._task_origins.pop(key, None)
            self._committing.discard(key)
            self._resumable.discard(key)
            if not committed:
                self.store.unreserve(task.digest, task.length)
                if not kept:
                    self.store.discard(task.path)

    async def close(self) -> None:
        """Cancel downloads still receiving (their partial files are dropped); let verified ones be stored."""
        for key, download in list(self._downloads.items()):
            if key not in self._committing:
                download.cancel()
        await asyncio.gather(*self._downloads.values(), return_exceptions=True)
        self.sourcing.close()
        self._uncached_readers.shutdown(wait=False)


def _for_joiners(exc: BaseException) -> Exception:
    """What callers waiting on a start that failed hear: its exception, without a stream
    that is the starter's alone."""
    if isinstance(exc, NoRoom):
        return NoRoom(exc.message, exc.reason)
    return exc if isinstance(exc, Exception) else SourceUnavailable(502, "cancelled")


def _out_of_space(exc: BaseException | None) -> bool:
    """The store's disk (or the user's disk quota) is full, anywhere in ``exc``'s chain."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def within_range(start: int, chunk: bytearray, first: int, last: int) -> memoryview:
    """The bytes of ``chunk`` (the blob's bytes from ``start``) that fall in ``first..last``."""
    begin = min(max(first - start, 0), len(chunk))
    end = min(max(last + 1 - start, 0), len(chunk))
    return memoryview(chunk)[begin:max(begin, end)]


def _written(task: Task) -> int:
    """Bytes of the task's file that its pieces done fill (the last piece may be shorter)."""
    return min(task.bitmap.done * task.piece_length, task.length)


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


def _write_synced(path: Path, body: bytes) -> None:
    with open(path, "wb") as file:
        file.write(body)
        file.flush()
        os.fsync(file.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
