"""Pulls that survive a registry outage cluster-wide: a tag one node resolved is answered by
another that never saw it, from what a seed resolved and holds; and no member but a seed,
and nothing but what a seed checked, can decide which manifest a tag names."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, replace

import httpx

from damselfly.core.wire import ManifestRecord, TagRecord
from damselfly.lib.signed import Signer
from testkit.containerd import write_hosts
from testkit.images import build_image, push_image
from testkit.registry import Registry, RegistryClient
from testkit.tls import tls_dir
from testkit.wait import free_port, wait_until
from tests.integration.test_p2p_cluster import cluster_of
from tests.integration.test_scheduler_attacks import Member

MiB = 1024 * 1024
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = f"{OCI_INDEX}, {OCI_MANIFEST}"


def _tag_record(cluster, registry_host: str, repository: str, tag: str) -> dict | None:
    with cluster.scheduler.client() as client:
        answer = client.get("/api/v1/tags", params={"registry": registry_host, "repository": repository, "tag": tag})
    return answer.json() if answer.status_code == 200 else None


def test_a_tag_pulled_through_one_node_pulls_and_runs_through_another_with_the_registry_down(tmp_path, containerd):
    registry = Registry(tmp_path / "own-registry").start()
    try:
        client = RegistryClient(registry.url)
        image = build_image("outage/cluster", [2 * MiB, 1 * MiB])
        push_image(client, image)
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": image.manifest_digest, "size": len(image.manifest),
             "platform": {"architecture": arch, "os": "linux"}}]}).encode()
        client.push_manifest(image.name, "multi", index, OCI_INDEX)
        clusters = cluster_of(tmp_path, registry, tls=True)
        cluster = next(clusters)
        cluster(seed=True)
        peer_a, peer_b = cluster(), cluster()
        for tag in ("latest", "multi"):
            reference = f"{registry.host}/{image.name}:{tag}"
            hosts = write_hosts(tmp_path / "hosts-a", peer_a.url, registry.host, registry.url)
            containerd().ctr("images", "pull", "--hosts-dir", str(hosts), reference)
        records = {tag: wait_until(lambda t=tag: _tag_record(cluster, registry.host, image.name, t), 20,
                                   f"the seed's record of {tag}") for tag in ("latest", "multi")}
        assert records["latest"]["digest"] == image.manifest_digest and not records["latest"]["private"]
        assert records["multi"]["digest"] == "sha256:" + hashlib.sha256(index).hexdigest()
        registry.stop()

        hosts = write_hosts(tmp_path / "hosts-b", peer_b.url, registry.host, registry.url)
        fresh = containerd()  # peer B never saw either tag: the cluster answers for them
        fresh.ctr("images", "pull", "--hosts-dir", str(hosts), f"{registry.host}/{image.name}:multi")
        fresh.ctr("images", "pull", "--hosts-dir", str(hosts), f"{registry.host}/{image.name}:latest")
        reference = f"{registry.host}/{image.name}:latest"
        assert fresh.ctr("run", "--rm", reference, "cluster-run", "/bin/echo", "ok").stdout.strip() == "ok"
        assert peer_b.metric("damselfly_manifests_kept_served_total", 'answer="cluster"') >= 2
        assert "by a seed (cluster)" in peer_b.log()
        assert peer_b.metric("damselfly_p2p_bytes_total", 'source="origin"') == 0

        never = httpx.get(f"{peer_b.url}/v2/{image.name}/manifests/never-seen", params={"ns": registry.host},
                          headers={"Accept": ACCEPT}, timeout=30)
        assert never.status_code == 502 and "cannot reach upstream" in never.json()["errors"][0]["message"]
    finally:
        registry.stop()
        next(clusters, None)


@dataclass
class DownRegistry:
    """A registry nobody answers at: every node is in an outage from the start."""

    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def test_only_seeds_decide_what_a_tag_names_and_a_forged_record_is_never_served(tmp_path):
    registry = DownRegistry(free_port())
    clusters = cluster_of(tmp_path, registry, tls=True)
    cluster = next(clusters)
    try:
        cluster(seed=True)
        peer = cluster()
        forger = Member(cluster.scheduler, "forger", "seed")  # a seed certificate that lies
        assert forger.announce(seed=True).status_code == 200
        mallory = Member(cluster.scheduler, "mallory", "peer")
        assert mallory.announce().status_code == 200
        nobody_holds = "sha256:" + hashlib.sha256(b"not a manifest anyone holds").hexdigest()
        FORGER = Signer.of_tls_dir(tls_dir("forger", "seed"))  # noqa: N806 - a constant of this test

        def record(tag: str, digest: str, private: bool = False, size: int = 512,
                   signer: Signer | None = FORGER) -> dict:
            """A publication, signed by ``signer`` (the lying seed's certificate by default)."""
            manifest = ManifestRecord(registry.host, "victim/app", digest, size, OCI_MANIFEST, private)
            said = TagRecord(tag, manifest, time.time())
            if signer is not None:
                said = replace(said, manifest=replace(manifest, signature=signer.sign(said.signed_bytes())))
                manifest = replace(manifest, signature=signer.sign(manifest.signed_bytes()))
            return {"tag": said.to_json(), "manifests": [manifest.to_json()]}

        # A peer's certificate publishes nothing, not even under a seed's name.
        for host_id in ("mallory", "forger"):
            refused = mallory.http.post("/tags", json={"host_id": host_id, **record("latest", nobody_holds)})
            assert refused.status_code == 403 and "seeds only" in refused.json()["error"]
        assert forger.http.post("/tags", json={"host_id": "forger", **record("gone", nobody_holds)}).status_code == 200
        assert forger.http.post("/tags", json={"host_id": "forger",
                                               **record("secret", "sha256:" + "5" * 64, private=True)}).status_code == 200
        # Whoever writes the scheduler's records (Redis) but holds no seed's key: never taken.
        unsigned = {name: "sha256:" + hashlib.sha256(name.encode()).hexdigest() for name in ("unsigned", "peer-signed")}
        for name, signer in [("unsigned", None), ("peer-signed", Signer.of_tls_dir(tls_dir("mallory", "peer")))]:
            assert forger.http.post("/tags", json={"host_id": "forger", **record(name, unsigned[name], signer=signer)}
                                    ).status_code == 200

        url = f"{peer.url}/v2/victim/app/manifests"
        params = {"ns": registry.host}
        with httpx.Client(timeout=60, headers={"Accept": ACCEPT}) as client:
            # Private: refused before any byte is asked for, to a caller the registry has not confirmed.
            secret = client.get(f"{url}/secret", params=params, headers={"Authorization": "Bearer stolen"})
            assert secret.status_code == 503 and "not confirmed" in secret.json()["errors"][0]["message"]
            # A digest no seed holds: a clear 502 in bounded time, not a hang.
            started = time.monotonic()
            gone = client.get(f"{url}/gone", params=params)
            assert gone.status_code == 502 and nobody_holds in gone.json()["errors"][0]["message"]
            assert time.monotonic() - started < 30
            for name, digest in unsigned.items():  # the record is not taken: no fetch of its digest is tried
                refused = client.get(f"{url}/{name}", params=params)
                assert refused.status_code == 502 and digest not in refused.text, refused.text
        assert peer.metric("damselfly_manifests_kept_served_total", 'answer="cluster"') == 0
        assert peer.metric("damselfly_manifests_kept_served_total", 'answer="refused"') == 1
    finally:
        next(clusters, None)
