"""A cluster's block list: which manifests and blobs a mirror must not serve (pure).

Each entry is one of:

- a bare digest, ``sha256:<hex>``: that blob, or that manifest, in any repository of any
  registry;
- ``registry/repository@sha256:<hex>``: that digest (blob or manifest) in that repository;
- ``registry/repository:tag``: the manifest of that tag. A tag names a manifest, not
  its blobs: block the digests too, or the repository, to refuse content reached by
  digest (containerd resolves a tag first, so blocking it stops pulls by that tag);
- ``registry/repository`` without a tag or digest: everything of that repository.

References follow Docker's rules: no registry means Docker Hub, and a one-part name there
is under ``library/`` (``nginx:1.27`` is ``docker.io/library/nginx:1.27``). Docker Hub's
API hosts (``registry-1.docker.io``, ``index.docker.io``) are ``docker.io``, so that a
mirror whose default registry is Hub's API host matches entries written the usual way.
Registry names compare in lower case, as the mirror resolves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from damselfly.core.oci import DOCKER_HUB, Digest, ImageRef, OCIError, is_digest_reference

DOCKER_HUB_HOSTS = frozenset({DOCKER_HUB, "registry-1.docker.io", "index.docker.io"})


def canonical_registry(name: str) -> str:
    """A registry name as block-list entries and requests compare it."""
    lowered = name.lower()
    return DOCKER_HUB if lowered in DOCKER_HUB_HOSTS else lowered


@dataclass(frozen=True)
class BlockRule:
    """One entry of the block list, parsed. ``repository`` None: any registry and
    repository (a bare digest). ``tag`` and ``digest`` both None: the whole repository."""

    entry: str
    registry: str | None = None
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, entry: str) -> "BlockRule":
        """ValueError, saying what is wrong, for anything but a reference or a digest."""
        text = entry.strip()
        try:
            return cls(entry, digest=str(Digest.parse(text)))
        except OCIError:
            pass
        ref = ImageRef.parse(text)  # its ValueError names the problem
        registry, repository = canonical_registry(ref.registry), ref.repository
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"  # docker.io/nginx is docker.io/library/nginx
        if is_digest_reference(ref.reference):
            return cls(entry, registry, repository, digest=ref.reference)
        explicit_tag = text.endswith(f":{ref.reference}")
        return cls(entry, registry, repository, tag=ref.reference if explicit_tag else None)

    def _in_repository(self, registry: str, repository: str) -> bool:
        return self.repository is None or (self.registry == canonical_registry(registry)
                                           and self.repository == repository)

    def blocks_blob(self, registry: str, repository: str, digest: str) -> bool:
        if not self._in_repository(registry, repository):
            return False
        if self.digest is not None:
            return self.digest == digest
        return self.tag is None  # a whole repository; a tag names only its manifest

    def blocks_manifest(self, registry: str, repository: str, reference: str) -> bool:
        if not self._in_repository(registry, repository):
            return False
        if self.digest is not None:
            return self.digest == reference
        return self.tag is None or self.tag == reference


class BlockList:
    """The rules of one block list; ``blob`` and ``manifest`` name the entry that refuses
    a request, or None."""

    def __init__(self, rules: Iterable[BlockRule] = ()) -> None:
        self.rules = tuple(rules)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> tuple["BlockList", list[str]]:
        """The block list of ``entries``, and a line for each entry it could not read
        (the manager validates entries, so these come only from a manager of another
        version: they are skipped and logged, never a reason to drop the rest)."""
        rules, problems = [], []
        for entry in entries:
            try:
                rules.append(BlockRule.parse(entry))
            except ValueError as error:
                problems.append(f"{entry!r}: {error}")
        return cls(rules), problems

    def __len__(self) -> int:
        return len(self.rules)

    def blob(self, registry: str, repository: str, digest: str) -> str | None:
        return next((rule.entry for rule in self.rules if rule.blocks_blob(registry, repository, digest)), None)

    def manifest(self, registry: str, repository: str, reference: str) -> str | None:
        return next((rule.entry for rule in self.rules if rule.blocks_manifest(registry, repository, reference)),
                    None)


def refusal(what: str, entry: str) -> str:
    """The one line a refused client reads."""
    return f"{what} is blocked by this cluster's block list (entry {entry!r}); ask the cluster's operator"
