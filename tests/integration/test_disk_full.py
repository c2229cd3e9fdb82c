"""A store that cannot take a blob: the client still gets it, uncached and checked.

A data directory on a 48 MiB tmpfs fills under a 100 MiB download; a small quota full of
blobs that clients are reading leaves no room for another. Either way the client gets the
blob from the real docker-registry, its SHA-256 checked before its last bytes go, and
nothing partial stays in the store.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.integration.test_blob_api import corrupt_in_registry
from testkit.wait import wait_until

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs, unmounted after the test (after the mirrors on it stopped: requested first)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def blob_url(node, name: str, digest: str) -> str:
    return f"{node.url}/v2/{name}/blobs/{digest}"


def files_in(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file()]


def test_a_disk_that_fills_mid_blob_streams_the_rest_from_a_range_uncached(small_disk, damselfly, registry,
                                                                           registry_client):
    data = os.urandom(100 * MiB)
    digest = registry_client.push_blob("diskfull/blob", data)
    node = damselfly("--cache-quota", "1GiB", data_dir=small_disk / "data")  # the quota does not stop it first

    response = httpx.get(blob_url(node, "diskfull/blob", digest), params={"ns": registry.host}, timeout=120)
    assert response.status_code == 200
    assert len(response.content) == len(data)
    assert hashlib.sha256(response.content).hexdigest() == digest.removeprefix("sha256:")

    assert node.metric("damselfly_uncached_streams_total", 'reason="disk_full"') == 1
    assert node.metric("damselfly_proxy_served_bytes_total", 'source="uncached"') > 0
    gets = registry.blob_gets(digest)
    assert [g.status for g in gets] == [200, 206], "the rest came in one range request"
    assert 0 < gets[1].bytes < len(data) - 40 * MiB, "only what the full disk did not hold came again"
    assert files_in(node.data_dir) == [], "nothing partial is kept"
    wait_until(lambda: shutil.disk_usage(small_disk).used < MiB, 20, "the partial file's space to be freed")
    assert node.metric("damselfly_store_used_bytes") == 0


def test_a_wrong_blob_whose_rest_streams_uncached_is_cut_short(small_disk, damselfly, registry, registry_client):
    data = os.urandom(100 * MiB)
    digest = registry_client.push_blob("diskfull/corrupt", data)
    corrupt_in_registry(registry, digest)  # a byte in the middle: past what the disk holds
    node = damselfly("--cache-quota", "1GiB", data_dir=small_disk / "data")

    received = 0
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("GET", blob_url(node, "diskfull/corrupt", digest), params={"ns": registry.host},
                          timeout=120) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                received += len(chunk)
    assert 40 * MiB < received < len(data)
    assert node.metric("damselfly_uncached_streams_total", 'reason="disk_full"') == 1
    assert node.metric("damselfly_download_failures_total", 'reason="digest_mismatch"') == 1
    assert files_in(node.data_dir) == []


def test_no_room_beside_blobs_in_use_streams_uncached_and_evicts_nothing(damselfly, registry, registry_client):
    """Quota 32 MiB (high watermark 28.8 MiB): a 24 MiB blob being read leaves no room for 16 MiB."""
    held, extra, wrong = os.urandom(24 * MiB), os.urandom(16 * MiB), os.urandom(8 * MiB)
    held_digest, extra_digest, wrong_digest = (registry_client.push_blob("nofit/blob", d) for d in (held, extra, wrong))
    corrupt_in_registry(registry, wrong_digest)
    node = damselfly("--cache-quota", "32MiB", "--cache-high-watermark", "0.9", "--cache-low-watermark", "0.5")
    params = {"ns": registry.host}
    assert httpx.get(blob_url(node, "nofit/blob", held_digest), params=params, timeout=60).content == held
    held_path = node.data_dir / "blobs/sha256" / held_digest[7:9] / held_digest[7:]

    with httpx.stream("GET", blob_url(node, "nofit/blob", held_digest), params=params, timeout=60) as reader:
        chunks = reader.iter_bytes()
        received = [next(chunks)]
        response = httpx.get(blob_url(node, "nofit/blob", extra_digest), params=params, timeout=60)
        assert response.status_code == 200 and response.content == extra
        assert node.metric("damselfly_uncached_streams_total", 'reason="store_full"') == 1
        with pytest.raises(httpx.RemoteProtocolError):  # checked too: a wrong blob is not completed
            httpx.get(blob_url(node, "nofit/blob", wrong_digest), params=params, timeout=60)
        received.extend(chunks)
    assert b"".join(received) == held
    assert held_path.exists() and node.metric("damselfly_store_evictions_total") == 0
    assert node.metric("damselfly_store_blobs") == 1
    assert sorted(p.name for p in files_in(node.data_dir)) == [held_path.name, held_path.name + ".json"]
