"""A registry with Bearer token auth, as Docker Hub does it: credentials pass through,
and a cached private blob is never handed to a caller the registry would refuse."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import httpx
import pytest
from aiohttp import web

from testkit.containerd import write_hosts
from testkit.images import build_image, push_image
from testkit.registry import Registry, RegistryClient
from tests.support.tokenauth import TokenServer, bearer
from testkit.wait import free_port

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


def test_private_pull_through_mirror_and_refusals(tmp_path: Path, private_registry, damselfly, containerd):
    image = build_image("private/app", [2 * MiB, 6 * MiB])
    push_image(RegistryClient(private_registry.url, credentials=("alice", "wonderland")), image)
    node = damselfly("--registry", f"{private_registry.host}={private_registry.url}")
    hosts = write_hosts(tmp_path / "hosts", node.url, private_registry.host, private_registry.url)

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


class AiohttpFake:
    """A fake upstream: one aiohttp handler for every request, on a loopback port, served
    from its own thread; it records the paths it was asked for."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.port = free_port()
        self.paths: list[str] = []
        self._handler = handler
        self._loop = asyncio.new_event_loop()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        return await self._handler(request)

    def __enter__(self) -> "AiohttpFake":
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()


async def yes_to_everything(request: web.Request) -> web.Response:
    """A registry fake that an attacker runs and names: 200 to every request, credentials or not."""
    return web.Response(body=b"yes", headers={"Docker-Distribution-API-Version": "registry/2.0"})


def attacks(url: str, registry_name: str) -> list[dict]:
    """The attacker's GETs of a private blob: naming its own registry in the header or in
    ``ns``, with no credentials or forged ones, for the blob's repository or another."""
    other = url.replace("/v2/private/", "/v2/attacker/")
    return [
        {"method": "GET", "url": url, "headers": {"X-Dragonfly-Registry": registry_name}},
        {"method": "GET", "url": url, "params": {"ns": registry_name}, "headers": {"Authorization": "Bearer forged"}},
        {"method": "GET", "url": other, "params": {"ns": registry_name}},
    ]


def assert_refused(client: httpx.Client, attack: dict, secret: bytes) -> None:
    response = client.request(**attack)
    assert response.status_code in (401, 403), (attack, response.status_code)
    assert secret[:1024] not in response.content and len(response.content) < 4096


def test_a_cached_private_blob_is_checked_against_its_own_registry_not_one_the_caller_names(
        private_registry, token_server, damselfly):
    data = os.urandom(3 * MiB)
    digest = RegistryClient(private_registry.url, credentials=("alice", "wonderland")).push_blob("private/secret", data)
    with AiohttpFake(yes_to_everything) as fake:
        node = damselfly("--registry", f"{private_registry.host}={private_registry.url}",
                         "--registry", f"yes.test=http://{fake.host}")
        url = f"{node.url}/v2/private/secret/blobs/{digest}"
        with httpx.Client(timeout=30) as client:
            challenge = client.get(url, params={"ns": private_registry.host}).headers["WWW-Authenticate"]
            alice = bearer(client, challenge, ("alice", "wonderland"))
            stored = client.get(url, params={"ns": private_registry.host}, headers={"Authorization": alice})
            assert stored.status_code == 200 and stored.content == data

            head = {"method": "HEAD", "url": url, "headers": {"X-Dragonfly-Registry": "yes.test"}}
            for attack in [*attacks(url, "yes.test"), head]:  # a HEAD of a stored blob is answered here too
                assert_refused(client, attack, data)

            # Alice still gets it, even through the registry name the attacker used: her token is
            # checked by the registry the blob came from.
            for params in ({"ns": private_registry.host}, {"ns": "yes.test"}):
                granted = client.get(url, params=params, headers={"Authorization": alice})
                assert granted.status_code == 200 and granted.content == data
        assert fake.paths == [], "the named registry was never asked"
    assert [g.status for g in private_registry.blob_gets(digest)] == [401, 200], "the challenge, then one download"
    assert node.metric("damselfly_access_checks_total", 'result="refused"') >= len(attacks(url, "yes.test"))


GOOD_TOKEN = "Bearer the-real-one"


def gated_private_registry_fake(blob: bytes, gate: threading.Event) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A private registry fake: 401 without GOOD_TOKEN; a GET sends half the blob, then waits for
    ``gate``, so that the mirror's download is in flight while the attacker asks."""
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != GOOD_TOKEN:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="http://127.0.0.1:1/token"'})
        if request.method == "HEAD":
            return web.Response(body=blob)
        response = web.StreamResponse(headers={"Content-Length": str(len(blob))})
        await response.prepare(request)
        await response.write(blob[: len(blob) // 2])
        await asyncio.to_thread(gate.wait, 60)
        await response.write(blob[len(blob) // 2:])
        return response

    return handle


def test_an_attacker_joining_a_private_download_in_flight_is_checked_against_its_origin(damselfly):
    data = os.urandom(8 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    gate = threading.Event()
    with AiohttpFake(gated_private_registry_fake(data, gate)) as private, AiohttpFake(yes_to_everything) as fake:
        try:
            node = damselfly("--registry", f"private.test=http://{private.host}",
                             "--registry", f"yes.test=http://{fake.host}")
            url = f"{node.url}/v2/private/secret/blobs/{digest}"
            with httpx.Client(timeout=30) as client, client.stream(
                    "GET", url, params={"ns": "private.test"}, headers={"Authorization": GOOD_TOKEN}) as legit:
                chunks = legit.iter_bytes()
                received = [next(chunks)]  # the download is under way, held at half the blob
                for attack in attacks(url, "yes.test"):
                    assert_refused(client, attack, data)
                # Not stored yet: a HEAD is checked against the download's origin too.
                assert_refused(client, {"method": "HEAD", "url": url, "headers": {"X-Dragonfly-Registry": "yes.test"}},
                               data)
                gate.set()
                received.extend(chunks)
        finally:
            gate.set()  # before the fake stops: it waits for its handlers
    assert b"".join(received) == data
    assert fake.paths == [], "the named registry was never asked"
    assert private.paths.count(f"/v2/private/secret/blobs/{digest}") > len(attacks(url, "yes.test")) + 1
