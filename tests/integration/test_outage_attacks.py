"""Attacks on what the cluster serves for a tag while the registry is down, through a real
TLS cluster sharing a real redis-server (tests/support/preheat.py).

The attacker is whoever writes Redis: the preheat design treats it as untrusted ("neither a
scheduler nor Redis can change a registry, a tag, a private flag or a digest"), and
docs/security.md says the cluster's tag records "are written only by seeds". Every test
asserts the SAFE behaviour: it fails while the hole it names is open.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from damselfly.scheduler.tags import TAG_TTL, manifest_key, tag_key
from testkit.images import OCI_MANIFEST, build_image, push_image
from testkit.registry import Registry, RegistryClient
from tests.support.preheat import Members, preheat_members


@dataclass
class Cluster:
    registry: Registry
    members: Members

    def __getattr__(self, name: str) -> Any:
        return getattr(self.members, name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("outage-attacks")
    registry = Registry(tmp / "registry").start()
    try:
        with preheat_members(tmp, [registry.host], 1) as members:
            yield Cluster(registry, members)
    finally:
        registry.stop()


def test_whoever_writes_redis_cannot_point_a_tag_at_another_image_for_registry_outages(cluster: Cluster) -> None:
    """A tag record is plain JSON under damselfly:tag:<sha256(registry, repository, tag)>,
    with no seed's signature: the scheduler hands it to any node as "what a seed resolved",
    and the node checks only that the manifest's bytes match the digest the record names.
    Whoever writes Redis (or a lying scheduler) points victim/app:latest at any manifest the
    cluster can produce: here, one of the attacker's own repository that the node keeps.
    With the registry down, the node serves the attacker's image for the victim's tag."""
    evil = build_image("attacker/evil", [64 * 1024], tag="v1")
    victim = build_image("victim/app", [64 * 1024], tag="latest")
    client = RegistryClient(cluster.registry.url)
    push_image(client, evil)
    push_image(client, victim)
    peer = cluster.peers[0]
    ns = {"ns": cluster.registry.host}
    pulled = httpx.get(f"{peer.url}/v2/{evil.name}/manifests/v1", params=ns, headers={"Accept": OCI_MANIFEST},
                       timeout=30)
    assert pulled.status_code == 200 and pulled.content == evil.manifest

    evil_digest = "sha256:" + hashlib.sha256(evil.manifest).hexdigest()
    record = {"registry": cluster.registry.host, "repository": victim.name, "digest": evil_digest,
              "size": len(evil.manifest), "media_type": OCI_MANIFEST, "private": False,
              "tag": "latest", "resolved_at": time.time()}
    redis = cluster.redis.client()
    redis.set(tag_key(cluster.registry.host, victim.name, "latest"), json.dumps(record).encode(), ex=int(TAG_TTL))
    redis.set(manifest_key(cluster.registry.host, evil_digest), json.dumps(
        {k: record[k] for k in ("registry", "repository", "digest", "size", "media_type", "private")}).encode(),
        ex=600)

    cluster.registry.stop()
    try:
        answer = httpx.get(f"{peer.url}/v2/{victim.name}/manifests/latest", params=ns,
                           headers={"Accept": OCI_MANIFEST}, timeout=30)
        assert answer.content != evil.manifest, (
            f"{peer.url} served {evil.name}'s manifest for {victim.name}:latest from a record only Redis wrote")
    finally:
        cluster.registry.start()
