"""A registry with Bearer token auth, as Docker Hub does it: credentials pass through,
and a cached private blob is never handed to a caller the registry would refuse."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.support.images import build_image, push_image
from tests.support.registry import Registry, RegistryClient
from tests.support.tokenauth import TokenServer

MiB = 1024 * 1024
USERS = {
    "alice": ("wonderland", {"private/": ["pull", "push"]}),
    "bob": ("builder", {"other/": ["pull"]}),
}


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    server = TokenServer(tmp_path_factory.mktemp("tokens"), users=USERS).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("private-registry"), auth=token_server.registry_auth_config()).start()
    yield reg
    reg.stop()


def bearer(client: httpx.Client, challenge: str, credentials: tuple[str, str] | None) -> str:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    response = client.get(params["realm"], params={"service": params["service"], "scope": params["scope"]},
                          auth=httpx.BasicAuth(*credentials) if credentials else None)
    response.raise_for_status()
    return "Bearer " + response.json()["token"]


def test_private_pull_through_mirror_and_refusals(tmp_path: Path, private_registry, damselfly, containerd):
    image = build_image("private/app", [2 * MiB, 6 * MiB])
    push_image(RegistryClient(private_registry.url, credentials=("alice", "wonderland")), image)
    node = damselfly("--registry", f"{private_registry.host}={private_registry.url}")
    hosts = tmp_path / "hosts"
    subprocess.run([sys.executable, "-m", "damselfly", "containerd-config", "--mirror", node.url, "--dir", str(hosts),
                    "--registry", f"{private_registry.host}={private_registry.url}"], check=True, capture_output=True)

    ctd = containerd()
    reference = image.reference(private_registry.host)
    ctd.ctr("images", "pull", "--user", "alice:wonderland", "--hosts-dir", str(hosts), reference)
    assert ctd.ctr("run", "--rm", reference, "private-run", "/bin/echo", "ok").stdout.strip() == "ok"
    layer = image.layers[-1]
    assert len(private_registry.blob_gets(layer.digest)) == 1
    assert node.metric("damselfly_cache_misses_total") == len(image.layers) + 1

    url = f"{node.url}/v2/{image.name}/blobs/{layer.digest}"
    params = {"ns": private_registry.host}
    with httpx.Client(timeout=30) as client:
        # Anonymous: the registry's own challenge comes back, not the cached bytes.
        anonymous = client.get(url, params=params)
        assert anonymous.status_code == 401
        challenge = anonymous.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer realm=") and f'scope="repository:{image.name}:pull"' in challenge
        assert layer.data not in anonymous.content
        assert client.head(url, params=params).status_code == 401

        # An anonymous token and another user's token carry no pull right on this repository.
        for credentials in (None, ("bob", "builder")):
            refused = client.get(url, params=params, headers={"Authorization": bearer(client, challenge, credentials)})
            assert refused.status_code in (401, 403), refused.status_code
            assert layer.data[:1024] not in refused.content

        # A forged token is refused by the registry, so by the mirror.
        forged = client.get(url, params=params, headers={"Authorization": "Bearer not-a-token"})
        assert forged.status_code == 401

        # Alice, who can pull, gets the cached bytes; the registry only confirmed access.
        token = bearer(client, challenge, ("alice", "wonderland"))
        granted = client.get(url, params=params, headers={"Authorization": token})
        assert granted.status_code == 200
        assert hashlib.sha256(granted.content).hexdigest() == layer.digest.removeprefix("sha256:")
        assert client.get(url, params=params, headers={"Authorization": token, "Range": "bytes=0-9"}).content == layer.data[:10]

    assert len(private_registry.blob_gets(layer.digest)) == 1, "cached blob must not be downloaded again"
    assert node.metric("damselfly_access_checks_total", 'result="refused"') >= 4
    assert node.metric("damselfly_access_checks_total", 'result="granted"') >= 1

    # After a restart the blob is still known as private.
    node.stop()
    restarted = damselfly("--registry", f"{private_registry.host}={private_registry.url}", data_dir=node.data_dir)
    url = f"{restarted.url}/v2/{image.name}/blobs/{layer.digest}"
    with httpx.Client(timeout=30) as client:
        assert client.get(url, params=params).status_code == 401
        granted = client.get(url, params=params, headers={"Authorization": token})
        assert granted.status_code == 200 and granted.content == layer.data
    assert restarted.metric("damselfly_cache_misses_total") == 0
    assert len(private_registry.blob_gets(layer.digest)) == 1
