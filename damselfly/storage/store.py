"""The node's content-addressed blob store, with a disk quota and LRU eviction.

Layout under the data directory::

    blobs/<algorithm>/<hex[:2]>/<hex>        verified data, named by its digest
    blobs/<algorithm>/<hex[:2]>/<hex>.json   metadata (length, protected, origin)
    incoming/<alg>-<hex>                      a resumable download (pieces from peers)
    incoming/<alg>-<hex>.partial              its checkpoint: length, pieces written, digests
    incoming/tmp-*                            other downloads in progress

A blob appears under ``blobs/`` only by an atomic rename after its digest was checked
and its data flushed, and its metadata is renamed into place first, so after any crash
a data file there is complete and verified. At start, ``incoming/`` keeps only
resumable downloads with a checkpoint; their pieces are checked again before reuse.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from damselfly.core.oci import Digest
from damselfly.lib.units import format_size

log = logging.getLogger(__name__)


@dataclass
class BlobMeta:
    length: int
    # The registry demanded credentials for it: serve only after confirming a caller's access.
    protected: bool
    registry: str
    repository: str
    stored_at: float
    piece_length: int | None = None
    piece_digests: list[str] | None = None  # sha256 per piece, for serving other peers


PARTIAL_SUFFIX = ".partial"
_RESUMABLE_NAME = re.compile(r"^(sha256|sha512)-[0-9a-f]{64,128}$")


@dataclass
class Partial:
    """A resumable download's checkpoint: pieces written (not yet re-checked) and their digests."""

    length: int
    piece_length: int
    pieces: list[int]
    digests: dict[str, str]
    protected: bool
    origin: str = ""  # wire.origin_key of where it came from: a protected partial resumes only for a caller there


@dataclass
class StoredBlob:
    digest: Digest
    path: Path
    meta: BlobMeta


class BlobTooLarge(Exception):
    """A blob larger than the store ever keeps: refused before anything is evicted for it."""


class StoreFull(Exception):
    """No room for a blob now, even with every idle blob evicted: the rest is held by readers
    and downloads. Nothing was evicted; the blob can still be read uncached."""


class BlobStore:
    def __init__(
        self,
        root: Path,
        quota: int,
        high_watermark: float = 0.9,
        low_watermark: float = 0.75,
        in_use: Callable[[str], bool] = lambda digest: False,
        on_evict: Callable[[StoredBlob], None] | None = None,
    ) -> None:
        if not 0 < low_watermark <= high_watermark <= 1:
            raise ValueError("watermarks must satisfy 0 < low <= high <= 1")
        self.root = root
        self.quota = quota
        self.high = int(quota * high_watermark)
        self.low = int(quota * low_watermark)
        self.in_use = in_use  # digests that readers hold: never evicted; set by the blob service
        self._on_evict = on_evict
        self._blobs: OrderedDict[str, StoredBlob] = OrderedDict()  # least recently used first
        self._stored_bytes = 0
        self._reserved_bytes = 0  # lengths claimed by downloads in flight: weighed, never evicted for
        self._landed: dict[str, int] = {}  # bytes each download in flight has on disk (its written pieces)
        self._landed_bytes = 0
        self._incoming = root / "incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)
        self._clean_incoming()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        self._load()

    # -- paths ---------------------------------------------------------------------

    def _data_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex

    @staticmethod
    def _meta_path(data_path: Path) -> Path:
        return data_path.with_name(data_path.name + ".json")

    # -- start-up ------------------------------------------------------------------

    def _load(self) -> None:
        found: list[tuple[float, StoredBlob]] = []
        for meta_path in (self.root / "blobs").glob("*/*/*.json"):
            data_path = meta_path.with_suffix("")
            try:
                digest = Digest.parse(f"{data_path.parent.parent.name}:{data_path.name}")
                meta = BlobMeta(**json.loads(meta_path.read_text()))
                size = data_path.stat().st_size
                if size != meta.length:
                    raise ValueError(f"data file has {size} bytes, metadata says {meta.length}")
            except FileNotFoundError:
                meta_path.unlink(missing_ok=True)  # a crash between the two renames
                continue
            except Exception as exc:  # noqa: BLE001 - any unreadable entry is dropped, not served
                log.warning("dropping unreadable cache entry %s: %s", data_path, exc)
                data_path.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                continue
            found.append((meta_path.stat().st_mtime, StoredBlob(digest, data_path, meta)))
        for data_path in (self.root / "blobs").glob("*/*/*"):
            if data_path.suffix != ".json" and not self._meta_path(data_path).exists():
                data_path.unlink(missing_ok=True)
        for _, blob in sorted(found, key=lambda item: item[0]):
            self._blobs[str(blob.digest)] = blob
            self._stored_bytes += blob.meta.length
        log.info("blob store %s: %d blobs, %s of %s quota", self.root, len(self._blobs),
                 format_size(self._stored_bytes), format_size(self.quota))
        self.collect_garbage()

    # -- queries -------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Stored blobs plus space reserved for downloads in progress."""
        return self._stored_bytes + self._reserved_bytes

    @property
    def occupied_bytes(self) -> int:
        """Stored blobs plus the bytes downloads have actually written: what eviction keeps
        under the watermarks (a claimed length is not on disk until it lands)."""
        return self._stored_bytes + self._landed_bytes

    @property
    def blob_count(self) -> int:
        return len(self._blobs)

    def lookup(self, digest: Digest) -> StoredBlob | None:
        blob = self._blobs.get(str(digest))
        if blob is not None:
            self._blobs.move_to_end(str(digest))
            try:
                os.utime(self._meta_path(blob.path))  # remembered as recently used across restarts
            except FileNotFoundError:
                pass
        return blob

    # -- writers -------------------------------------------------------------------

    def reserve(self, length: int) -> None:
        """Hold room for a download of ``length`` bytes before it starts; nothing is evicted.

        The length is what the source claims, so it is only weighed: above the high watermark
        (a blob the store would evict everything for and still not keep under it)
        BlobTooLarge; when evicting every idle blob would still leave it above the high
        watermark, StoreFull. Blobs are evicted as the download's bytes land (``landed``):
        a source that claims a length and sends little evicts nothing for it.
        """
        if length > self.high:
            raise BlobTooLarge(f"a blob of {format_size(length)} is larger than this cache keeps "
                               f"({format_size(self.high)}, the high watermark of its {format_size(self.quota)} quota)")
        if self.used_bytes + length > self.high and self.used_bytes + length - self._idle_bytes() > self.high:
            raise StoreFull(f"no room for {format_size(length)}: {format_size(self.used_bytes)} of the cache's "
                            f"{format_size(self.high)} are held by readers and downloads")
        self._reserved_bytes += length

    def _idle_bytes(self) -> int:
        """Bytes that eviction could free now."""
        return sum(blob.meta.length for key, blob in self._blobs.items() if not self.in_use(key))

    def landed(self, digest: Digest, written: int) -> None:
        """The download of ``digest`` has ``written`` bytes on disk now (called per piece):
        when they take the cache over the high watermark, idle blobs are evicted for them."""
        key = str(digest)
        before = self.occupied_bytes
        self._landed_bytes += written - self._landed.get(key, 0)
        self._landed[key] = written
        # Only when these bytes cross the watermark: above it with every blob in use, each
        # piece would walk the whole cache for nothing; a reader's release collects then.
        if before <= self.high < self.occupied_bytes:
            self.collect_garbage()

    def unreserve(self, digest: Digest, length: int) -> None:
        """A download of ``digest`` ends unstored: drop its claim and the bytes it had landed."""
        self._reserved_bytes -= length
        self._landed_bytes -= self._landed.pop(str(digest), 0)

    def new_incoming(self, digest: Digest) -> Path:
        fd, name = tempfile.mkstemp(prefix=f"tmp-{digest.algorithm}-{digest.hex[:16]}-", dir=self._incoming)
        os.close(fd)
        return Path(name)

    # -- resumable downloads -------------------------------------------------------

    def _clean_incoming(self) -> None:
        """Keep resumable downloads that have a checkpoint; drop everything else."""
        for path in self._incoming.iterdir():
            if path.suffix == PARTIAL_SUFFIX:
                if not path.with_suffix("").exists():
                    path.unlink(missing_ok=True)
            elif not (_RESUMABLE_NAME.match(path.name) and path.with_name(path.name + PARTIAL_SUFFIX).exists()):
                path.unlink(missing_ok=True) if path.is_file() else shutil.rmtree(path, ignore_errors=True)

    def resumable_path(self, digest: Digest) -> Path:
        path = self._incoming / f"{digest.algorithm}-{digest.hex}"
        path.touch()
        return path

    def checkpoint(self, path: Path, partial: "Partial") -> None:
        """Record which pieces of a resumable download are written (atomically). On a full
        disk the previous checkpoint stays: a restart resumes from less, never from a torn one."""
        target = path.with_name(path.name + PARTIAL_SUFFIX)
        tmp = target.with_name(target.name + ".tmp")
        try:
            tmp.write_text(json.dumps(asdict(partial)))
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not checkpoint %s: %s", path.name, exc.strerror or exc)

    def partial(self, digest: Digest) -> tuple[Path, "Partial"] | None:
        """The checkpoint of an earlier download of ``digest``, if one survived."""
        path = self._incoming / f"{digest.algorithm}-{digest.hex}"
        try:
            partial = Partial(**json.loads(path.with_name(path.name + PARTIAL_SUFFIX).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return (path, partial) if path.exists() else None

    def commit(self, incoming: Path, digest: Digest, meta: BlobMeta) -> StoredBlob:
        """Move a verified, flushed download into the store (metadata first, then data)."""
        data_path = self._data_path(digest)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        meta_tmp = incoming.with_name(incoming.name + ".json")
        meta_tmp.write_text(json.dumps(asdict(meta)))
        os.replace(meta_tmp, self._meta_path(data_path))
        os.replace(incoming, data_path)
        incoming.with_name(incoming.name + PARTIAL_SUFFIX).unlink(missing_ok=True)
        self.unreserve(digest, meta.length)  # its landed bytes are stored bytes now
        blob = self._blobs.get(str(digest))
        if blob is None:
            blob = StoredBlob(digest, data_path, meta)
            self._blobs[str(digest)] = blob
            self._stored_bytes += meta.length
        else:
            blob.meta = meta
        self._blobs.move_to_end(str(digest))
        return blob

    def discard(self, incoming: Path) -> None:
        """Drop a download that is not stored, with its checkpoint and any metadata a
        failed commit (a full disk) left beside it."""
        for suffix in ("", PARTIAL_SUFFIX, ".json"):
            incoming.with_name(incoming.name + suffix).unlink(missing_ok=True)

    # -- eviction ------------------------------------------------------------------

    def collect_garbage(self) -> None:
        """Above the high watermark, evict least recently used idle blobs down to the low one.
        Only bytes on disk count: stored blobs and what downloads have written so far."""
        if self.occupied_bytes <= self.high:
            return
        for key in list(self._blobs):
            if self.occupied_bytes <= self.low:
                break
            if self.in_use(key):
                continue
            blob = self._blobs[key]
            del self._blobs[key]
            self._stored_bytes -= blob.meta.length
            self._meta_path(blob.path).unlink(missing_ok=True)
            blob.path.unlink(missing_ok=True)
            log.info("evicted %s (%s) to keep the cache under its quota", key, format_size(blob.meta.length))
            if self._on_evict:
                self._on_evict(blob)
        if self.occupied_bytes > self.high:
            log.warning("cache holds %s, above its high watermark %s: the rest is in use by readers or downloads",
                        format_size(self.occupied_bytes), format_size(self.high))
