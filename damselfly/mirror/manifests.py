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
from damselfly.core.wire import MAX_MANIFEST_BYTES

log = logging.getLogger(__name__)

MAX_KEPT = 20000  # files of manifests, and of tag resolutions
MAX_KEPT_BYTES = 256 * 1024 * 1024  # of each, and at most a tenth of the blob cache's quota


def is_outage(status: int) -> bool:
    """An upstream answer that says the registry cannot answer now, not that the answer is no."""
    return status >= 500 or status == 429


def accepts(accept_headers: list[str], content_type: str) -> bool:
    """Whether a client's Accept headers take ``content_type`` (no Accept takes anything;
    a range with q=0 takes nothing)."""
    parts = [part for header in accept_headers for part in header.split(",") if part.strip()]
    if not parts:
        return True
    kind = content_type.split(";")[0].strip().lower()
    for part in parts:
        media_range, *parameters = (item.strip().lower() for item in part.split(";"))
        if any(_is_zero_q(parameter) for parameter in parameters):
            continue
        if media_range in ("*/*", kind) or (media_range.endswith("/*") and kind.startswith(media_range[:-1])):
            return True
    return False


def _is_zero_q(parameter: str) -> bool:
    name, _, value = parameter.partition("=")
    try:
        return name.strip() == "q" and float(value) == 0
    except ValueError:
        return False


def _descriptors(body: bytes, *fields: str) -> list[dict[str, object]]:
    """The descriptors a manifest's JSON lists under ``fields`` (an object or a list of
    them each); none for anything malformed."""
    try:
        manifest = json.loads(body)
    except ValueError:
        return []
    if not isinstance(manifest, dict):
        return []
    found = []
    for name in fields:
        value = manifest.get(name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                found.append(item)
    return found


def _digest_of(descriptor: dict[str, object]) -> Digest | None:
    try:
        return Digest.parse(str(descriptor.get("digest")))
    except OCIError:
        return None


def descriptor_sizes(body: bytes) -> dict[str, int]:
    """An image manifest's blobs (config and layers): digest -> size."""
    sizes = {}
    for descriptor in _descriptors(body, "config", "layers"):
        digest, size = _digest_of(descriptor), descriptor.get("size")
        if digest is not None and isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            sizes[str(digest)] = size
    return sizes


def child_manifests(body: bytes) -> list[Digest]:
    """An index's (or manifest list's) manifests, in its order."""
    return [digest for descriptor in _descriptors(body, "manifests")
            if (digest := _digest_of(descriptor)) is not None]


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
    """Manifests by (registry, digest) and tags' last resolutions, one file each under ``directory``.

    Every file is written whole (rename) and every manifest is hashed again when read: a
    torn or altered file is dropped, never served. A manifest is kept per registry: one
    registry's copy (and the media type it gave) never answers for another's. Past
    ``max_kept`` files or ``max_bytes`` of either kind, the least recently written go."""

    def __init__(self, directory: Path, max_bytes: int, max_kept: int = MAX_KEPT,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self._clock = clock
        self._max_kept = max_kept
        self._max_bytes = max_bytes
        self._sizes: dict[str, dict[str, int]] = {}  # kind -> file name -> bytes
        for kind in ("by-digest", "tags"):
            folder = directory / kind
            folder.mkdir(parents=True, exist_ok=True)
            self._sizes[kind] = {}
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith(".tmp-"):  # a write a crash cut short
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                    else:
                        with contextlib.suppress(OSError):
                            self._sizes[kind][entry.name] = entry.stat().st_size

    # -- manifests by digest -------------------------------------------------------

    def put(self, digest: Digest, body: bytes, content_type: str, registry: str, repository: str,
            protected: bool, unprotects: bool = True) -> bool:
        """Keep ``body`` if it hashes to ``digest`` (False, nothing kept, if not). A public
        copy replaces a protected one (the registry served it without credentials) unless
        not ``unprotects`` (a preheat's: it only ever adds)."""
        if len(body) > MAX_MANIFEST_BYTES or not _matches(digest, body):
            return False
        name = _digest_file(registry, digest)
        kept_protected = self._protected(name)
        if kept_protected is not None and (protected or not kept_protected or not unprotects):
            return True  # kept already (get re-checks its bytes when it serves them)
        header = {"content_type": content_type, "registry": registry, "repository": repository,
                  "protected": protected}
        self._write("by-digest", name, json.dumps(header).encode() + b"\n" + body)
        return True

    def _protected(self, name: str) -> bool | None:
        """Whether the kept manifest ``name`` came with credentials; None if none is kept
        (or its header cannot be read: the next write replaces it). Reads the header alone."""
        if name not in self._sizes["by-digest"]:
            return None
        try:
            with open(self.directory / "by-digest" / name, "rb") as file:
                return bool(json.loads(file.readline())["protected"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def get(self, digest: Digest, registry: str) -> KeptManifest | None:
        """The manifest ``registry`` served for ``digest``, if kept and still true to it."""
        path = self.directory / "by-digest" / _digest_file(registry, digest)
        try:
            header_line, _, body = path.read_bytes().partition(b"\n")
            header = json.loads(header_line)
            kept = KeptManifest(digest, str(header["content_type"]), body, str(header["registry"]),
                                str(header["repository"]), bool(header["protected"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("dropped kept manifest %s: unreadable (%s)", digest, exc)
            self._drop("by-digest", path.name)
            return None
        if not _matches(digest, body):
            log.warning("dropped kept manifest %s: its bytes no longer match the digest", digest)
            self._drop("by-digest", path.name)
            return None
        return kept

    # -- tags ------------------------------------------------------------------------

    def remember_tag(self, registry: str, repository: str, tag: str, digest: Digest, content_type: str) -> None:
        record = {"digest": str(digest), "content_type": content_type, "resolved_at": self._clock()}
        self._write("tags", _tag_file(registry, repository, tag), json.dumps(record).encode())

    def tag(self, registry: str, repository: str, tag: str) -> TagResolution | None:
        name = _tag_file(registry, repository, tag)
        try:
            record = json.loads((self.directory / "tags" / name).read_bytes())
            return TagResolution(Digest.parse(record["digest"]), str(record["content_type"]),
                                 float(record["resolved_at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, OCIError) as exc:
            log.warning("dropped the remembered resolution of %s:%s: unreadable (%s)", repository, tag, exc)
            self._drop("tags", name)
            return None

    def forget_tag(self, registry: str, repository: str, tag: str) -> None:
        """The registry says the tag is gone: it must not come back in an outage."""
        self._drop("tags", _tag_file(registry, repository, tag))

    def age(self, resolution: TagResolution) -> float:
        return max(0.0, self._clock() - resolution.resolved_at)

    # -- files -----------------------------------------------------------------------

    def _write(self, kind: str, name: str, content: bytes) -> None:
        folder = self.directory / kind
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
        sizes = self._sizes[kind]
        sizes[name] = len(content)
        if len(sizes) > self._max_kept or sum(sizes.values()) > self._max_bytes:
            self._trim(kind)

    def _trim(self, kind: str) -> None:
        """Drop the least recently written files of ``kind`` until it holds at most nine
        tenths of the files and bytes it may."""
        sizes = self._sizes[kind]
        total = sum(sizes.values())
        for name in sorted(sizes, key=lambda name: _mtime(self.directory / kind / name)):
            if len(sizes) <= self._max_kept * 0.9 and total <= self._max_bytes * 0.9:
                break
            total -= sizes[name]
            self._drop(kind, name)

    def _drop(self, kind: str, name: str) -> None:
        with contextlib.suppress(OSError):
            (self.directory / kind / name).unlink()
        self._sizes[kind].pop(name, None)


def _matches(digest: Digest, body: bytes) -> bool:
    hasher = digest.hasher()
    hasher.update(body)
    return hasher.hexdigest() == digest.hex


def _digest_file(registry: str, digest: Digest) -> str:
    return f"{hashlib.sha256(registry.encode()).hexdigest()[:32]}-{digest.algorithm}-{digest.hex}"


def _tag_file(registry: str, repository: str, tag: str) -> str:
    return hashlib.sha256(f"{registry}\0{repository}\0{tag}".encode()).hexdigest()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0

