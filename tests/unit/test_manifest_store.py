"""The mirror's kept manifests and tag resolutions: nothing is kept or served that does not
hash to its digest, and the rules for when the registry is failing."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from damselfly.core.oci import Digest
from damselfly.mirror.manifests import MAX_MANIFEST_BYTES, ManifestStore, accepts, is_outage

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BODY = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
DIGEST = Digest("sha256", hashlib.sha256(BODY).hexdigest())
REGISTRY = "http://127.0.0.1:5000"
BUDGET = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("status", "outage"), [(500, True), (503, True), (429, True), (404, False), (401, False),
                                                (200, False), (403, False)])
def test_outage_is_a_failing_registry_not_a_no(status: int, outage: bool) -> None:
    assert is_outage(status) is outage


@pytest.mark.parametrize(("accept", "taken"), [
    ([], True),
    ([f"{INDEX}, {MANIFEST}"], True),
    ([INDEX, MANIFEST], True),
    ([f"{MANIFEST};q=0.9"], True),
    (["application/*"], True),
    (["*/*"], True),
    ([INDEX], False),
    ([f"{MANIFEST};q=0, {INDEX}"], False),
    (["*/*; q=0.0"], False),
    ([f"{MANIFEST}; q=0.5"], True),
    (["application/vnd.docker.distribution.manifest.v2+json"], False),
])
def test_accepts(accept: list[str], taken: bool) -> None:
    assert accepts(accept, MANIFEST) is taken


def test_a_manifest_is_kept_only_when_it_hashes_to_its_digest(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path, max_bytes=BUDGET)
    liar = Digest("sha256", "0" * 64)
    assert not store.put(liar, BODY, MANIFEST, REGISTRY, "app", protected=False)
    assert store.get(liar, REGISTRY) is None
    assert store.put(DIGEST, BODY, MANIFEST, REGISTRY, "app", protected=False)
    kept = store.get(DIGEST, REGISTRY)
    assert kept is not None and (kept.body, kept.content_type, kept.repository, kept.protected) == (
        BODY, MANIFEST, "app", False)
    assert ManifestStore(tmp_path, max_bytes=BUDGET).get(DIGEST, REGISTRY) == kept  # it outlives the process


def test_a_kept_manifest_altered_on_disk_is_dropped_not_served(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path, max_bytes=BUDGET)
    store.put(DIGEST, BODY, MANIFEST, REGISTRY, "app", protected=False)
    (path,) = (tmp_path / "by-digest").iterdir()
    path.write_bytes(path.read_bytes().replace(b"schemaVersion", b"schemaVersioN"))
    assert store.get(DIGEST, REGISTRY) is None and not path.exists()
    store.put(DIGEST, BODY, MANIFEST, REGISTRY, "app", protected=False)
    path.write_bytes(b"not json\n" + BODY)
    assert store.get(DIGEST, REGISTRY) is None and not path.exists()


def test_a_public_copy_replaces_a_protected_one_never_the_reverse(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path, max_bytes=BUDGET)
    store.put(DIGEST, BODY, MANIFEST, REGISTRY, "private/app", protected=True)
    store.put(DIGEST, BODY, MANIFEST, REGISTRY, "public/app", protected=False)
    assert store.get(DIGEST, REGISTRY).protected is False  # type: ignore[union-attr]
    store.put(DIGEST, BODY, MANIFEST, REGISTRY, "private/app", protected=True)
    kept = store.get(DIGEST, REGISTRY)
    assert kept is not None and (kept.protected, kept.repository) == (False, "public/app")


def test_oversized_manifests_are_not_kept(tmp_path: Path) -> None:
    body = b" " * (MAX_MANIFEST_BYTES + 1)
    digest = Digest("sha256", hashlib.sha256(body).hexdigest())
    assert not ManifestStore(tmp_path, max_bytes=BUDGET).put(digest, body, MANIFEST, REGISTRY, "app", protected=False)


def test_tag_resolutions_age_and_are_per_registry_and_repository(tmp_path: Path) -> None:
    clock = Clock()
    store = ManifestStore(tmp_path, max_bytes=BUDGET, clock=clock)
    store.remember_tag(REGISTRY, "app", "v1", DIGEST, MANIFEST)
    clock.now += 90
    resolution = store.tag(REGISTRY, "app", "v1")
    assert resolution is not None and resolution.digest == DIGEST and store.age(resolution) == 90
    assert store.tag(REGISTRY, "other", "v1") is None
    assert store.tag("http://127.0.0.1:5001", "app", "v1") is None
    assert store.tag(REGISTRY, "app", "v2") is None


def test_an_unreadable_tag_resolution_is_dropped(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path, max_bytes=BUDGET)
    store.remember_tag(REGISTRY, "app", "v1", DIGEST, MANIFEST)
    (path,) = (tmp_path / "tags").iterdir()
    path.write_text('{"digest": "sha256:nothex", "content_type": "x", "resolved_at": 1}')
    assert store.tag(REGISTRY, "app", "v1") is None and not path.exists()


def test_past_the_file_limit_the_oldest_go_down_to_nine_tenths(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path, max_bytes=BUDGET, max_kept=20)
    for index in range(20):
        store.remember_tag(REGISTRY, "app", f"v{index}", DIGEST, MANIFEST)
        (path,) = [p for p in (tmp_path / "tags").iterdir() if p.stat().st_mtime > 10_000]
        os.utime(path, (1000 + index, 1000 + index))  # written in this order, whatever the clock's grain
    store.remember_tag(REGISTRY, "app", "v20", DIGEST, MANIFEST)
    assert sum(1 for _ in (tmp_path / "tags").iterdir()) == 18
    assert all(store.tag(REGISTRY, "app", f"v{index}") is None for index in range(3))
    assert store.tag(REGISTRY, "app", "v3") is not None and store.tag(REGISTRY, "app", "v20") is not None


def test_a_manifest_is_kept_per_registry(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path, max_bytes=BUDGET)
    store.put(DIGEST, BODY, INDEX, "http://127.0.0.1:6000", "anything", protected=False)  # the same bytes, mislabelled
    assert store.get(DIGEST, REGISTRY) is None
    store.put(DIGEST, BODY, MANIFEST, REGISTRY, "app", protected=False)
    assert store.get(DIGEST, REGISTRY).content_type == MANIFEST  # type: ignore[union-attr]


def test_the_oldest_go_past_the_byte_budget(tmp_path: Path) -> None:
    store = ManifestStore(tmp_path, max_bytes=10 * len(BODY) + 1000)
    for index in range(12):
        body = BODY.replace(b"}", b',"n":%d}' % index)
        store.put(Digest("sha256", hashlib.sha256(body).hexdigest()), body, MANIFEST, REGISTRY, "app", False)
        for path in (tmp_path / "by-digest").iterdir():
            if path.stat().st_mtime > 10_000:
                os.utime(path, (1000 + index, 1000 + index))
    used = sum(p.stat().st_size for p in (tmp_path / "by-digest").iterdir())
    assert used <= 0.9 * (10 * len(BODY) + 1000)
    first = BODY.replace(b"}", b',"n":0}')
    last = BODY.replace(b"}", b',"n":11}')
    assert store.get(Digest("sha256", hashlib.sha256(first).hexdigest()), REGISTRY) is None
    assert store.get(Digest("sha256", hashlib.sha256(last).hexdigest()), REGISTRY) is not None


def test_writes_a_crash_cut_short_are_cleared_at_start(tmp_path: Path) -> None:
    ManifestStore(tmp_path, max_bytes=BUDGET)
    leftover = tmp_path / "by-digest" / ".tmp-abc"
    leftover.write_bytes(b"half a manifest")
    ManifestStore(tmp_path, max_bytes=BUDGET)
    assert not leftover.exists()


def test_a_full_disk_costs_the_keeping_never_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ManifestStore(tmp_path, max_bytes=BUDGET)

    def disk_full(source: str, target: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    assert store.put(DIGEST, BODY, MANIFEST, REGISTRY, "app", protected=False)  # no error reaches the pull
    store.remember_tag(REGISTRY, "app", "v1", DIGEST, MANIFEST)
    assert store.get(DIGEST, REGISTRY) is None and store.tag(REGISTRY, "app", "v1") is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nor a half-written file left behind
    monkeypatch.undo()
    store.put(DIGEST, BODY, MANIFEST, REGISTRY, "app", protected=False)  # room again: kept
    assert store.get(DIGEST, REGISTRY) is not None
