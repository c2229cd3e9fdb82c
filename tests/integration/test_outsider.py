"""Attackers against a cluster that runs with --tls-dir: an outsider without a certificate of
the cluster's CA, a member that records every header it is sent, and a local client that
names a registry saying yes to everything to read another caller's private blob."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from aiohttp import web

from damselfly.lib.tls import ClusterTLS, init_ca, issue
from damselfly.core.pieces import piece_length_for
from testkit.cluster import SchedulerProcess, start_peer
from testkit.daemon import Damselfly
from testkit.processes import QuietRequestHandler, ThreadedHTTPServer
from testkit.registry import Registry, RegistryClient
from testkit.tls import tls_dir
from tests.support.tokenauth import TokenServer
from testkit.wait import free_port, wait_until

MiB = 1024 * 1024
USERS = {"alice": ("wonderland", {"private/": ["pull", "push"]})}
USERS_CREDENTIALS = ("alice", "wonderland")


@pytest.fixture
def tls_cluster(tmp_path: Path, registry: Registry) -> Iterator[dict[str, Any]]:
    started: list[Any] = []
    try:
        scheduler = SchedulerProcess(tmp_path / "scheduler", tls=True)
        started.append(scheduler)
        scheduler.start()
        mapping = ["--registry", f"{registry.host}={registry.url}"]
        started.append(start_peer(tmp_path / "seed/data", [scheduler.url], mapping, seed=True))
        started.append(start_peer(tmp_path / "peer/data", [scheduler.url], mapping))
        yield dict(zip(("scheduler", "seed", "peer"), started, strict=True))
    finally:  # also when a process did not come up: none is left running
        for process in reversed(started):
            process.stop()


def _handshake(url: str, context: ssl.SSLContext) -> str:
    """What a TLS client gets from ``url``'s port: 'ok' after a full handshake and an answer, else the error."""
    host, port = url.split("//")[1].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=host) as conn:
                conn.sendall(b"GET /healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = conn.recv(100)
                return "ok" if answer.startswith(b"HTTP/1.1 200") else f"answered {answer[:40]!r}"
    except (ssl.SSLError, ConnectionError, OSError) as exc:
        return type(exc).__name__


def _outsider_contexts(tmp_path: Path) -> dict[str, ssl.SSLContext]:
    """No certificate at all; and a seed certificate of another CA."""
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname, bare.verify_mode = False, ssl.CERT_NONE
    init_ca(tmp_path / "other-ca")
    issue(tmp_path / "other-ca", "seed-evil", "seed", tmp_path / "evil")
    foreign = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    foreign.check_hostname, foreign.verify_mode = False, ssl.CERT_NONE
    foreign.load_cert_chain(tmp_path / "evil/cert.pem", tmp_path / "evil/key.pem")
    return {"no certificate": bare, "another CA's seed certificate": foreign}


def test_outsider_gets_no_answer_from_any_member_port(tmp_path: Path, tls_cluster, registry: Registry,
                                                      registry_client) -> None:
    blob = b"held by the seed " * 4096
    digest = registry_client.push_blob("outsider/held", blob)
    seed: Damselfly = tls_cluster["seed"]
    held = httpx.get(f"{seed.url}/v2/outsider/held/blobs/{digest}", params={"ns": registry.host})
    assert held.content == blob, held.text[:300]
    member = ClusterTLS.load(tls_dir("harness", "peer")).client_context()
    ports = {"scheduler": tls_cluster["scheduler"].url, "seed upload": seed.upload_url,
             "peer upload": tls_cluster["peer"].upload_url}
    for name, url in ports.items():
        assert _handshake(url, member) == "ok", f"a member reaches the {name}"
        for who, context in _outsider_contexts(tmp_path / name.replace(" ", "-")).items():
            assert _handshake(url, context) != "ok", f"{who} reached the {name}"
    # Held and not held look the same from outside: no answer either way.
    for piece in (f"/pieces/{digest}/0", f"/pieces/sha256:{'0' * 64}/0"):
        with pytest.raises(httpx.HTTPError):
            httpx.get(seed.upload_url + piece, verify=False, timeout=5)
    # Plain HTTP to a TLS port says nothing either.
    with pytest.raises(httpx.HTTPError):
        httpx.get(seed.upload_url.replace("https:", "http:") + f"/pieces/{digest}/0", timeout=5)


class RecordingMember:
    """A fake member (a valid peer certificate) whose upload server records every request's headers."""

    def __init__(self, name: str) -> None:
        self.tls = ClusterTLS.load(tls_dir(name, "peer"))
        self.port = free_port()
        self.headers: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def record(request: web.Request) -> web.Response:
            self.headers.append(dict(request.headers))
            return web.Response(body=b"\0" * 1024)  # wrong bytes, for whoever asks

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(
            web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.tls.server_context()).start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> "RecordingMember":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[tuple[Registry, TokenServer]]:
    tokens = TokenServer(tmp_path / "tokens", users=USERS).start()
    registry = Registry(tmp_path / "private-registry", auth=tokens.registry_auth_config()).start()
    yield registry, tokens
    registry.stop()
    tokens.stop()


def _bearer(registry: Registry, name: str, credentials: tuple[str, str]) -> str:
    challenge = httpx.get(f"{registry.url}/v2/").headers["WWW-Authenticate"]
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    answer = httpx.get(params["realm"], params={"service": params["service"], "scope": f"repository:{name}:pull"},
                       auth=httpx.BasicAuth(*credentials))
    answer.raise_for_status()
    return "Bearer " + answer.json()["token"]


def test_credentials_reach_only_the_registry_and_the_seed(tmp_path: Path, private_registry) -> None:
    registry, _ = private_registry
    blob = hashlib.sha256(b"private").digest() * (3 * MiB // 32)
    digest = RegistryClient(registry.url, credentials=USERS_CREDENTIALS).push_blob("private/app", blob)
    token = _bearer(registry, "private/app", USERS_CREDENTIALS)
    scheduler = SchedulerProcess(tmp_path / "scheduler", tls=True).start()
    mapping = ["--registry", f"{registry.host}={registry.url}"]
    nodes: list[Damselfly] = []
    recorder = RecordingMember(f"recorder-{free_port()}").start()
    try:
        nodes += [start_peer(tmp_path / "seed/data", [scheduler.url], mapping, seed=True),
                  start_peer(tmp_path / "peer/data", [scheduler.url], mapping)]
        with scheduler.client() as api:
            # The recorder cannot pose as a seed: its certificate says peer.
            pose = {"id": recorder.tls.identity.name, "upload_url": recorder.url, "seed": True}
            assert api.post("/api/v1/hosts", json=pose).status_code == 403
        member = httpx.Client(base_url=scheduler.url, verify=recorder.tls.client_context(), timeout=10)
        with member:
            assert member.post("/api/v1/hosts", json={**pose, "seed": False}).status_code == 200
            # It claims the whole blob, hoping to be asked for pieces with the caller's credentials.
            claim = {"host_id": recorder.tls.identity.name, "length": len(blob),
                     "piece_length": piece_length_for(len(blob)), "pieces": list(range(12)), "seeding": False}
            member.post(f"/api/v1/tasks/{digest}/register", json=claim)
        peer = nodes[1]
        got = httpx.get(f"{peer.url}/v2/private/app/blobs/{digest}", params={"ns": registry.host},
                        headers={"Authorization": token}, timeout=60)
        assert got.status_code == 200 and got.content == blob
        secret = token.split()[1]
        assert all(secret not in " ".join(h.values()) for h in recorder.headers), "a member saw the credentials"
        assert all("Authorization" not in h for h in recorder.headers)
        for path in tmp_path.rglob("*"):  # logs, caches, checkpoints: nothing keeps the credentials
            if path.is_file() and path.stat().st_size < 64 * MiB:
                assert secret.encode() not in path.read_bytes(), f"{path} holds the caller's token"
        wait_until(lambda: "private/app" in nodes[0].log(), 10, "the seed to fetch for the cluster")
    finally:
        recorder.stop()
        for process in (*reversed(nodes), scheduler):
            process.stop()



class YesRegistryFake:
    """A registry that says every blob exists (HEAD 200, any length asked for) and has no bytes."""

    def __init__(self, lengths: dict[str, int]) -> None:
        self.port = free_port()
        self.requests: list[str] = []
        fake = self

        class Handler(QuietRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:  # noqa: N802
                fake.requests.append(f"HEAD {self.path}")
                self.send_response(200)
                self.send_header("Content-Length", str(lengths.get(self.path.rsplit("/", 1)[-1].split("?")[0], 0)))
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                fake.requests.append(f"GET {self.path}")
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadedHTTPServer(Handler, self.port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop()


def test_a_private_blob_does_not_travel_to_a_caller_another_registry_vouches_for(tmp_path: Path,
                                                                                private_registry) -> None:
    registry, _ = private_registry
    blob = hashlib.sha256(b"secret layer").digest() * (2 * MiB // 32)
    digest = RegistryClient(registry.url, credentials=USERS_CREDENTIALS).push_blob("private/app", blob)
    token = _bearer(registry, "private/app", USERS_CREDENTIALS)
    yes = YesRegistryFake({digest: len(blob)})
    scheduler = SchedulerProcess(tmp_path / "scheduler", tls=True).start()
    mapping = ["--registry", f"{registry.host}={registry.url}", "--registry", f"{yes.host}=http://{yes.host}"]
    nodes: list[Damselfly] = []
    try:
        for name in ("seed", "victim", "attacker"):
            nodes.append(start_peer(tmp_path / f"{name}/data", [scheduler.url], mapping, seed=name == "seed"))
        victim, attacker = nodes[1], nodes[2]
        got = httpx.get(f"{victim.url}/v2/private/app/blobs/{digest}", params={"ns": registry.host},
                        headers={"Authorization": token}, timeout=60)
        assert got.status_code == 200 and got.content == blob
        # The yes-registry vouches for the anonymous attacker; the victim's node and the seed hold the blob.
        stolen = httpx.get(f"{attacker.url}/v2/anything/blobs/{digest}", params={"ns": yes.host}, timeout=90)
        leaked = stolen.content == blob
        assert not leaked, "a peer handed a private blob to a caller its registry never accepted"
        assert stolen.status_code >= 400 or len(stolen.content) < len(blob)
        again = httpx.get(f"{attacker.url}/v2/private/app/blobs/{digest}", params={"ns": registry.host}, timeout=60)
        assert again.status_code == 401 and not again.content == blob
        assert victim.metric("damselfly_upload_refused_total", 'reason="unknown_task"') + \
            nodes[0].metric("damselfly_upload_refused_total", 'reason="unknown_task"') >= 1, "nobody was asked"
    finally:
        yes.stop()
        for process in (*reversed(nodes), scheduler):
            process.stop()


def test_a_connection_that_never_says_hello_is_dropped(tls_cluster) -> None:
    """Silent connections would each hold a descriptor until the node could take no more."""
    from damselfly.lib.serve import HANDSHAKE_TIMEOUT

    seed: Damselfly = tls_cluster["seed"]
    host, port = seed.upload_url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=HANDSHAKE_TIMEOUT + 10) as silent:
        try:
            closed = silent.recv(1) == b""
        except ConnectionResetError:
            closed = True
    assert closed, "the node kept a connection that never started its handshake"
