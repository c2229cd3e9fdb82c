"""Pulls that survive the registry going down: manifests by digest are kept and served
again, a tag's last resolution stands in while the registry fails, and neither a lying
registry nor a caller without confirmed credentials gets anything it should not."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from testkit.containerd import write_hosts
from testkit.images import build_image, push_image
from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.registry import Registry, RegistryClient
from testkit.wait import free_port
from tests.support.tokenauth import TokenServer, bearer

MiB = 1024 * 1024
OCI_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture
def own_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry of this test alone: the test stops it."""
    registry = Registry(tmp_path / "own-registry").start()
    yield registry
    registry.stop()


def test_an_image_pulled_once_pulls_and_runs_with_the_registry_down(tmp_path, own_registry, damselfly, containerd):
    image = build_image("outage/app", [2 * MiB, 3 * MiB])
    push_image(RegistryClient(own_registry.url), image)
    node = damselfly("--registry", f"{own_registry.host}={own_registry.url}")
    hosts = write_hosts(tmp_path / "hosts", node.url, own_registry.host, own_registry.url)
    reference = image.reference(own_registry.host)
    containerd().ctr("images", "pull", "--hosts-dir", str(hosts), reference)
    own_registry.stop()

    fresh = containerd()  # knows nothing of the image: it resolves the tag through the mirror
    fresh.ctr("images", "pull", "--hosts-dir", str(hosts), reference)
    assert fresh.ctr("run", "--rm", reference, "outage-run", "/bin/echo", "ok").stdout.strip() == "ok"
    assert node.metric("damselfly_manifests_kept_served_total", 'answer="stale"') >= 1
    assert "served outage/app:latest as sha256:" in node.log()

    with httpx.Client(timeout=30) as client:
        never = client.get(f"{node.url}/v2/outage/app/manifests/never-seen", params={"ns": own_registry.host},
                           headers={"Accept": OCI_ACCEPT})
        assert never.status_code == 502 and "cannot reach upstream" in never.json()["errors"][0]["message"]
        by_digest = client.get(f"{node.url}/v2/outage/app/manifests/{image.manifest_digest}",
                               params={"ns": own_registry.host})
        assert by_digest.status_code == 200
        assert hashlib.sha256(by_digest.content).hexdigest() == image.manifest_digest.split(":")[1]
        assert by_digest.headers["Docker-Content-Digest"] == image.manifest_digest


def test_a_stale_tag_is_served_no_longer_than_its_ttl(tmp_path, own_registry, damselfly):
    image = build_image("outage/ttl", [1 * MiB])
    push_image(RegistryClient(own_registry.url), image)
    node = damselfly("--registry", f"{own_registry.host}={own_registry.url}", "--stale-tag-ttl", "0")
    url = f"{node.url}/v2/outage/ttl/manifests/latest"
    params = {"ns": own_registry.host}
    with httpx.Client(timeout=30) as client:
        assert client.get(url, params=params, headers={"Accept": OCI_ACCEPT}).status_code == 200
        own_registry.stop()
        assert client.get(url, params=params, headers={"Accept": OCI_ACCEPT}).status_code == 502
        # The manifest by digest never goes stale: it cannot change.
        assert client.get(f"{node.url}/v2/outage/ttl/manifests/{image.manifest_digest}",
                          params=params).status_code == 200


MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {}, "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class FakeRegistry:
    """A registry answering every manifest GET with ``status``, ``headers`` and
    ``body(path)``, which the tests set: honest by default (one manifest for every tag), or
    busy, broken, or lying as a compromised registry or a bad proxy on the way could."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests = 0
        self.status = 200
        self.headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json",
                        "Docker-Content-Digest": MANIFEST_DIGEST}
        self.body: Callable[[str], bytes] = lambda path: MANIFEST
        fake = self

        class Handler(QuietRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                fake.requests += 1
                body = fake.body(self.path) if fake.status < 300 else b""
                self.send_response(fake.status)
                for key, value in fake.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadedHTTPServer(Handler, self.port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fail(self, status: int) -> None:
        self.status, self.headers = status, {"Retry-After": "7"}

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    yield fake
    fake.stop()


def _node_for(damselfly, *registries: FakeRegistry | Registry, more: tuple[str, ...] = ()):
    mapped = [f"{r.host}=http://{r.host}" for r in registries]
    return damselfly(*(arg for mapping in mapped for arg in ("--registry", mapping)), *more)


LIE = MANIFEST.replace(b"[]", b'["not what you asked for"]')


def test_a_manifest_that_does_not_match_its_digest_is_refused_and_not_kept(damselfly, fake_registry):
    fake_registry.body = lambda path: LIE
    node = _node_for(damselfly, fake_registry)
    url = f"{node.url}/v2/victim/app/manifests/{MANIFEST_DIGEST}"
    with httpx.Client(timeout=30) as client:
        for attempt in (1, 2):  # nothing was kept: the second request asks the registry again
            answer = client.get(url, params={"ns": fake_registry.host})
            assert answer.status_code == 502 and b"not what you asked for" not in answer.content
            assert "does not match" in answer.json()["errors"][0]["message"]
            assert fake_registry.requests == attempt
        # By tag, the stated digest is not what the bytes hash to: passed on (the client
        # checks), but neither kept nor remembered for an outage.
        tag_url = f"{node.url}/v2/victim/app/manifests/v1"
        assert client.get(tag_url, params={"ns": fake_registry.host}).status_code == 200
        fake_registry.fail(500)
        assert client.get(tag_url, params={"ns": fake_registry.host}).status_code == 502
    assert "whose bytes do not match the digest" in node.log()


@pytest.mark.parametrize("trick", ["over-4-MiB", "content-encoding", "status-203", "header-lies"])
def test_no_answer_by_digest_dodges_the_check(damselfly, fake_registry, trick):
    if trick == "over-4-MiB":
        fake_registry.body = lambda path: LIE + b" " * (4 * MiB + 1)  # JSON whitespace: a manifest still
    elif trick == "content-encoding":
        fake_registry.body = lambda path: LIE
        fake_registry.headers["Content-Encoding"] = "identity"
    elif trick == "status-203":
        fake_registry.body = lambda path: LIE
        fake_registry.status = 203
    else:  # the right bytes, but the header names another digest
        fake_registry.headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
    node = _node_for(damselfly, fake_registry)
    with httpx.Client(timeout=30) as client:
        for method in ("GET", "HEAD"):
            answer = client.request(method, f"{node.url}/v2/victim/app/manifests/{MANIFEST_DIGEST}",
                                    params={"ns": fake_registry.host})
            if trick == "header-lies":
                assert answer.status_code == 200 and answer.headers["Docker-Content-Digest"] == MANIFEST_DIGEST
            elif method == "GET":
                assert answer.status_code == 502, f"{answer.status_code}: wrong bytes went out for {MANIFEST_DIGEST}"


def test_one_registry_cannot_set_what_another_registrys_manifest_is(tmp_path, damselfly, own_registry, fake_registry):
    image = build_image("poison/app", [1 * MiB])
    push_image(RegistryClient(own_registry.url), image)
    node = _node_for(damselfly, own_registry, fake_registry)
    with httpx.Client(timeout=30) as client:
        honest = client.get(f"{own_registry.url}/v2/poison/app/manifests/{image.manifest_digest}",
                            headers={"Accept": OCI_ACCEPT})
        fake_registry.body = lambda path: image.manifest  # the same bytes, called an index
        fake_registry.headers = {"Content-Type": "application/vnd.oci.image.index.v1+json"}
        seeded = client.get(f"{node.url}/v2/anything/manifests/{image.manifest_digest}",
                            params={"ns": fake_registry.host})
        assert seeded.status_code == 200
        victim = client.get(f"{node.url}/v2/poison/app/manifests/{image.manifest_digest}",
                            params={"ns": own_registry.host}, headers={"Accept": OCI_ACCEPT})
    assert victim.status_code == 200 and victim.headers["Content-Type"] == honest.headers["Content-Type"]


def test_kept_manifests_stay_within_a_tenth_of_the_cache_quota(damselfly, fake_registry):
    fake_registry.headers.pop("Docker-Content-Digest")
    fake_registry.body = lambda path: hashlib.sha256(path.encode()).digest() * (MiB // 32)  # 1 MiB, one per tag
    node = _node_for(damselfly, fake_registry, more=("--cache-quota", "32MiB"))
    with httpx.Client(timeout=30) as client:
        for n in range(12):  # bounded: 12 MiB offered to a budget of 3.2
            assert client.get(f"{node.url}/v2/fill/disk/manifests/t{n}",
                              params={"ns": fake_registry.host}).status_code == 200
    used = sum(p.stat().st_size for p in (node.data_dir / "manifests").rglob("*") if p.is_file())
    assert used <= 3.2 * MiB + 4096, f"{used / MiB:.1f} MiB of kept manifests under a 32 MiB cache quota"
    assert used >= 2 * MiB  # the newest are kept


@pytest.mark.parametrize(("status", "unseen_status"), [(429, 429), (500, 502)])
def test_a_busy_or_broken_registry_is_an_outage(damselfly, fake_registry, status, unseen_status):
    node = _node_for(damselfly, fake_registry)
    params = {"ns": fake_registry.host}
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{node.url}/v2/app/manifests/v1", params=params).content == MANIFEST
        fake_registry.fail(status)
        stale = client.get(f"{node.url}/v2/app/manifests/v1", params=params)
        assert stale.status_code == 200 and stale.content == MANIFEST
        assert stale.headers["Docker-Content-Digest"] == MANIFEST_DIGEST
        unseen = client.get(f"{node.url}/v2/app/manifests/v2", params=params)
        assert unseen.status_code == unseen_status  # a 429 goes back as it came, Retry-After and all
        if status == 429:
            assert unseen.headers["Retry-After"] == "7"
        assert client.head(f"{node.url}/v2/app/manifests/v1", params=params).headers["Content-Length"] == str(
            len(MANIFEST))


# --- a private image ------------------------------------------------------------------------------------------------

USERS = {"alice": ("wonderland", {"private/": ["pull", "push"]})}


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path / "tokens", users=USERS).start()
    yield server
    server.stop()


def test_a_private_manifest_goes_only_to_a_caller_confirmed_recently(tmp_path, token_server, damselfly):
    registry = Registry(tmp_path / "private-registry", auth=token_server.registry_auth_config()).start()
    try:
        image = build_image("private/outage", [1 * MiB])
        push_image(RegistryClient(registry.url, credentials=("alice", "wonderland")), image)
        node = damselfly("--registry", f"{registry.host}={registry.url}")
        params = {"ns": registry.host}
        tag_url = f"{node.url}/v2/private/outage/manifests/latest"
        digest_url = f"{node.url}/v2/private/outage/manifests/{image.manifest_digest}"
        with httpx.Client(timeout=30) as client:
            challenge = client.get(tag_url, params=params).headers["WWW-Authenticate"]
            alice = {"Authorization": bearer(client, challenge, ("alice", "wonderland")), "Accept": OCI_ACCEPT}
            anonymous = {"Authorization": bearer(client, challenge, None), "Accept": OCI_ACCEPT}
            first = client.get(tag_url, params=params, headers=alice)
            assert first.status_code == 200
            # A kept private manifest does not pass the registry's check by being kept.
            assert client.get(digest_url, params=params, headers=anonymous).status_code == 401
            assert client.get(digest_url, params=params, headers=alice).status_code == 200
            registry.stop()

            for url in (tag_url, digest_url):
                assert client.get(url, params=params, headers=alice).content == first.content
                for caller in (anonymous, {"Accept": OCI_ACCEPT}):
                    refused = client.get(url, params=params, headers=caller)
                    assert refused.status_code == 503 and first.content not in refused.content
                    assert "not served unchecked" in refused.json()["errors"][0]["message"]
        assert node.metric("damselfly_manifests_kept_served_total", 'answer="refused"') == 4
    finally:
        registry.stop()


def test_a_tag_the_registry_deleted_is_not_served_in_an_outage(damselfly, fake_registry):
    node = _node_for(damselfly, fake_registry)
    url, params = f"{node.url}/v2/app/manifests/v1", {"ns": fake_registry.host}
    with httpx.Client(timeout=30) as client:
        assert client.get(url, params=params).status_code == 200
        fake_registry.fail(404)
        assert client.get(url, params=params).status_code == 404
        fake_registry.fail(500)
        assert client.get(url, params=params).status_code == 502  # not the manifest it named before


def test_schema1_manifests_are_never_kept_nor_sent_unchecked_by_digest(damselfly, fake_registry):
    fake_registry.headers["Content-Type"] = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    node = _node_for(damselfly, fake_registry)
    params = {"ns": fake_registry.host}
    with httpx.Client(timeout=30) as client:
        by_digest = client.get(f"{node.url}/v2/app/manifests/{MANIFEST_DIGEST}", params=params)
        assert by_digest.status_code == 502 and "schema 1" in by_digest.json()["errors"][0]["message"]
        assert client.get(f"{node.url}/v2/app/manifests/v1", params=params).content == MANIFEST  # by tag: passed on
        fake_registry.fail(500)
        assert client.get(f"{node.url}/v2/app/manifests/v1", params=params).status_code == 502  # nothing kept


def test_a_rate_limited_caller_without_a_confirmation_hears_the_429(damselfly, fake_registry):
    node = _node_for(damselfly, fake_registry)
    url, params = f"{node.url}/v2/private/app/manifests/v1", {"ns": fake_registry.host}
    with httpx.Client(timeout=30) as client:
        assert client.get(url, params=params, headers={"Authorization": "Bearer alice"}).status_code == 200
        fake_registry.fail(429)
        assert client.get(url, params=params, headers={"Authorization": "Bearer alice"}).content == MANIFEST
        other = client.get(url, params=params, headers={"Authorization": "Bearer mallory"})
        assert other.status_code == 429 and other.headers["Retry-After"] == "7" and MANIFEST not in other.content
        fake_registry.fail(503)
        assert client.get(url, params=params, headers={"Authorization": "Bearer mallory"}).status_code == 503
