"""How a node gets a blob's bytes: the part of every download that the node's role decides.

The composition root (damselfly.node) picks one sourcing for the node's role and gives it
to the blob service, which asks it to open each download it starts:

- OriginSourcing (a mirror): the origin registry sends the blob in one GET, in order.
- SeedSourcing (a seed peer): the same, or in range requests when the peers that asked for
  the blob read it in ranges; every task is offered to the P2P network, and the network
  hears how each ended.
- NetworkSourcing (a peer): the registry is only asked, with the caller's credentials,
  whether the caller may have the blob and how long it is; the bytes come from parents the
  scheduler hands out, in any order, so the download is checkpointed and resumable.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

from damselfly.blobs.rangefill import RangeFill
from damselfly.core.oci import Digest, Origin
from damselfly.storage.task import Task
from damselfly.storage.writer import CopySource, copy_into_task, file_digest


class SourceStream(CopySource, Protocol):
    """A download in progress, read by a worker thread (``readinto`` raises SourceUnavailable)."""

    length: int


class BlobSource(Protocol):
    """The origin registry, as downloads see it."""

    async def open_blob(self, origin: Origin, digest: Digest, span: tuple[int, int] | None = None) -> SourceStream:
        """Start a download of the blob or of ``span`` (start, length); raise SourceRefused or SourceUnavailable."""

    async def blob_length(self, origin: Origin, digest: Digest) -> int:
        """Confirm the caller may fetch the blob, and learn its length (a HEAD)."""


@dataclass(frozen=True)
class Download:
    """A download its source agreed to: what the blob service needs to claim room for it and run it."""

    length: int
    fill: Callable[[Task], Awaitable[str]]  # writes the blob into a task; returns the hex digest of what came
    # The origin's response, already open: if the store has no room, the caller reads it uncached.
    stream: SourceStream | None = None
    # Pieces come in any order (from peers): checkpointed as they land, kept at shutdown for the next start.
    resumable: bool = False


class Sourcing(Protocol):
    """How this node's downloads get their bytes, and what the P2P network hears of them."""

    async def open(self, digest: Digest, origin: Origin, by_ranges: bool, length: int | None = None) -> Download:
        """Ask the source for the blob; raise SourceRefused or SourceUnavailable. ``by_ranges``:
        a seed told to fetch a task that its peers read in ranges. ``length``: known already
        (a preheat's manifest said it); a source that reads the registry learns it there anyway."""

    def offer(self, task: Task, origin: Origin) -> None:
        """A task this node downloads or holds, offered to the P2P network (a seed's part)."""

    def finished(self, task: Task, success: bool, reason: str = "") -> None:
        """How a download ended here."""

    def close(self) -> None:
        """Free what the downloads used, once none runs."""


class SeedNetwork(Protocol):
    """The P2P network as a seed's downloads see it."""

    def publish(self, task: Task, origin: Origin) -> None:
        """Offer a task this node downloads from the origin, or holds, to the network."""

    def finished(self, task: Task, success: bool, reason: str = "") -> None:
        """Tell the network how the task ended here."""


class PeerNetwork(Protocol):
    """The P2P network as a peer's downloads see it."""

    async def download(self, task: Task, origin: Origin) -> str:
        """Fill ``task`` from parents (or the origin when told to); return the blob's hex digest."""

    def finished(self, task: Task, success: bool, reason: str = "") -> None:
        """Tell the network how the task ended here."""


class OriginSourcing:
    """A mirror's: every byte from the origin registry, nothing told to anyone."""

    def __init__(self, source: BlobSource, on_bytes: Callable[[int], None]) -> None:
        self.source = source
        self.on_bytes = on_bytes  # bytes that came from the origin, for the metrics
        # Threads that copy origin downloads: their own pool, so long copies never starve to_thread.
        self._copiers = ThreadPoolExecutor(32, thread_name_prefix="blob-copy")

    async def open(self, digest: Digest, origin: Origin, by_ranges: bool, length: int | None = None) -> Download:
        if by_ranges:
            length = await self.source.blob_length(origin, digest)
            return Download(length, lambda task: self._fill_by_ranges(task, origin))
        stream = await self.source.open_blob(origin, digest)
        return Download(stream.length, lambda task: self._fill_in_order(task, stream), stream=stream)

    def offer(self, task: Task, origin: Origin) -> None:
        """A mirror has no network to offer it to."""

    def finished(self, task: Task, success: bool, reason: str = "") -> None:
        """Nobody else is told."""

    def close(self) -> None:
        self._copiers.shutdown(wait=False)

    async def _fill_in_order(self, task: Task, stream: SourceStream) -> str:
        """Copy the origin's stream in order on worker threads; return the digest of what it sent."""
        digest = await copy_into_task(self._copiers, stream, task, 0, task.length,
                                      lambda begin, end, _: self.on_bytes(end - begin), task.digest.hasher())
        assert digest is not None  # a copy with a blob hasher returns the blob's digest
        return digest

    async def _fill_by_ranges(self, task: Task, origin: Origin) -> str:
        """Fill the task with range requests, waited-for pieces first; return the file's digest."""
        def open_range(start: int, length: int) -> Awaitable[SourceStream]:
            return self.source.open_blob(origin, task.digest, (start, length))

        await RangeFill(task, open_range, self._copiers, on_bytes=self.on_bytes).run()
        return await asyncio.to_thread(file_digest, task.path, task.digest.hasher())


class SeedSourcing(OriginSourcing):
    """A seed peer's: from the origin like a mirror, each task offered to the network, which hears how it ended."""

    def __init__(self, source: BlobSource, on_bytes: Callable[[int], None], network: SeedNetwork) -> None:
        super().__init__(source, on_bytes)
        self.network = network

    def offer(self, task: Task, origin: Origin) -> None:
        self.network.publish(task, origin)

    def finished(self, task: Task, success: bool, reason: str = "") -> None:
        self.network.finished(task, success, reason)


class NetworkSourcing:
    """A peer's: the registry says who may have the blob and how long it is; parents send the bytes."""

    def __init__(self, registry: BlobSource, network: PeerNetwork) -> None:
        self.registry = registry
        self.network = network

    async def open(self, digest: Digest, origin: Origin, by_ranges: bool, length: int | None = None) -> Download:
        if length is None:
            length = await self.registry.blob_length(origin, digest)  # with the caller's credentials
        return Download(length, lambda task: self.network.download(task, origin), resumable=True)

    def offer(self, task: Task, origin: Origin) -> None:
        """A peer's download registers with the scheduler itself (see Network.download)."""

    def finished(self, task: Task, success: bool, reason: str = "") -> None:
        self.network.finished(task, success, reason)

    def close(self) -> None:
        """The network is the node's to close, after the downloads."""
