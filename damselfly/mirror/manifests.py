"""Manifests the mirror has passed on, kept so that pulls survive the registry going down.

A manifest addressed by digest never changes: once its bytes hash to the digest it is kept
and served again without asking the registry (one fetched with credentials only to callers
the registry recently let see it). A tag moves, so while the registry answers it decides;
its last resolution is remembered and served only when the registry fails (connection
error, timeout, 5xx, 429), for at most the stale-tag TTL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from damselfly.core.oci import Digest, OCIError

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what registries must accept (distribution spec); larger ones pass uncached
MAX_KEPT = 20000  # manifests and tag resolutions each; the oldest tenth goes past it


def is_outage(status: int) -> bool:
    """An upstream answer that says the registry cannot answer now, not that the answer is no."""
    return status >= 500 or status == 429


def accepts(accept_headers: list[str], content_type: str) -> bool:
    """Whether a client's Accept headers take ``content_type`` (no Accept takes anything)."""
    ranges = [part.split(";")[0].strip().lower() for header in accept_headers for part in header.split(",")]
    ranges = [r for r in ranges if r]
    if not ranges:
        return True
    kind = content_type.split(";")[0].strip().lower()
    return any(r in ("*/*", kind) or (r.endswith("/*") and kind.startswith(r[:-1])) for r in ranges)


@dataclass(frozen=True)
class KeptManifest:
    digest: Digest
    content_type: str
    body: bytes
    registry: str  # the upstream URL it came from, and its repository: where access is confirmed
    repository: str
    protected: bool  # fetched with credentials


@dataclass(frozen=True)
class TagResolution:
    digest: Digest
    content_type: str
    resolved_at: float  # seconds since the epoch: it outlives restarts


class ManifestStore:
    """Manifests by digest and tags' last resolutions, one file each under ``directory``.

    Every file is written whole (rename) and every manifest is hashed again when read: a
    torn or altered file is dropped, never served."""

    def __init__(self, directory: Path, max_kept: int = MAX_KEPT, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock
        self._max_kept = max_kept
        self._counts: dict[str, int] = {}
        for kind in ("by-digest", "tags"):
            (directory / kind).mkdir(parents=True, exist_ok=True)
            self._counts[kind] = sum(1 for _ in (directory / kind).iterdir())

    # -- manifests by digest -------------------------------------------------------

    def put(self, digest: Digest, body: bytes, content_type: str, registry: str, repository: str,
            protected: bool) -> bool:
        """Keep ``body`` if it hashes to ``digest`` (False, nothing kept, if not). A public
        copy replaces a protected one: the registry served it without credentials."""
        if len(body) > MAX_MANIFEST_BYTES or not _matches(digest, body):
            return False
        kept = self.get(digest)
        if kept is not None and (protected or not kept.protected):
            return True
        header = {"content_type": content_type, "registry": registry, "repository": repository,
                  "protected": protected}
        self._write("by-digest", _digest_file(digest), json.dumps(header).encode() + b"\n" + body)
        return True

    def get(self, digest: Digest) -> KeptManifest | None:
        path = self.directory / "by-digest" / _digest_file(digest)
        try:
            header_line, _, body = path.read_bytes().partition(b"\n")
            header = json.loads(header_line)
            kept = KeptManifest(digest, str(header["content_type"]), body, str(header["registry"]),
                                str(header["repository"]), bool(header["protected"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("dropped kept manifest %s: unreadable (%s)", digest, exc)
            self._drop(path, "by-digest")
            return None
        if not _matches(digest, body):
            log.warning("dropped kept manifest %s: its bytes no longer match the digest", digest)
            self._drop(path, "by-digest")
            return None
        return kept

    # -- tags ------------------------------------------------------------------------

    def remember_tag(self, registry: str, repository: str, tag: str, digest: Digest, content_type: str) -> None:
        record = {"digest": str(digest), "content_type": content_type, "resolved_at": self._clock()}
        self._write("tags", _tag_file(registry, repository, tag), json.dumps(record).encode())

    def tag(self, registry: str, repository: str, tag: str) -> TagResolution | None:
        path = self.directory / "tags" / _tag_file(registry, repository, tag)
        try:
            record = json.loads(path.read_bytes())
            return TagResolution(Digest.parse(record["digest"]), str(record["content_type"]),
                                 float(record["resolved_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, OCIError) as exc:
            log.warning("dropped the remembered resolution of %s:%s: unreadable (%s)", repository, tag, exc)
            self._drop(path, "tags")
            return None

    def age(self, resolution: TagResolution) -> float:
        return max(0.0, self._clock() - resolution.resolved_at)

    # -- files -----------------------------------------------------------------------

    def _write(self, kind: str, name: str, content: bytes) -> None:
        folder = self.directory / kind
        new = not (folder / name).exists()
        temporary = ""
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", delete=False) as file:
                temporary = file.name
                file.write(content)
            os.replace(temporary, folder / name)
        except OSError as exc:  # a full disk costs the outage fallback, never the pull
            log.warning("could not keep %s/%s: %s", kind, name, exc)
            if temporary:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            return
        if new:
            self._counts[kind] += 1
            if self._counts[kind] > self._max_kept:
                self._trim(kind)

    def _trim(self, kind: str) -> None:
        """Drop the tenth least recently written files of ``kind``."""
        files = sorted((p for p in (self.directory / kind).iterdir() if not p.name.startswith(".tmp-")),
                       key=_mtime)
        for path in files[: max(1, len(files) // 10)]:
            self._drop(path, kind)
        self._counts[kind] = sum(1 for _ in (self.directory / kind).iterdir())

    def _drop(self, path: Path, kind: str) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
            self._counts[kind] = max(0, self._counts[kind] - 1)


def _matches(digest: Digest, body: bytes) -> bool:
    hasher = digest.hasher()
    hasher.update(body)
    return hasher.hexdigest() == digest.hex


def _digest_file(digest: Digest) -> str:
    return f"{digest.algorithm}-{digest.hex}"


def _tag_file(registry: str, repository: str, tag: str) -> str:
    return hashlib.sha256(f"{registry}\0{repository}\0{tag}".encode()).hexdigest()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
