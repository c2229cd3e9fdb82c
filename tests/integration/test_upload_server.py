"""A seed peer's upload server on loopback: runs of pieces in one body, bad counts, an asker
that stops reading halfway; protected blobs and strangers; what a seed trigger may ask for."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from damselfly.core.oci import Digest, Origin
from damselfly.blobs.service import BlobService
from damselfly.network.metrics import PeerMetrics
from damselfly.core.pieces import piece_digest, piece_length_for
from damselfly.storage.store import BlobMeta, BlobStore
from damselfly.upload.server import SeedDuty, UploadServer
from damselfly.core.wire import ORIGIN_HEADER, PIECE_TRAILER_SIZE, parse_piece_trailer
from tests.integration.test_p2p_cluster import cluster_of, get_blob
from testkit.processes import metric
from testkit.wait import wait_until

MiB = 1024 * 1024
BLOB = os.urandom(40 * MiB + 123)  # 256 KiB pieces, the last one short
PIECE = piece_length_for(len(BLOB))


@pytest.fixture
def cluster(tmp_path, registry):
    """Plain HTTP on loopback: these tests speak to the upload port byte by byte (the TLS
    path, and what it refuses, is tests/integration/test_outsider.py's)."""
    yield from cluster_of(tmp_path, registry, tls=False)


def seeded(cluster, registry, registry_client):
    digest = registry_client.push_blob("upload/runs", BLOB)
    seed = cluster(seed=True)
    assert get_blob(seed, registry.host, "upload/runs", digest) == BLOB
    return seed, digest


def body_pieces(response: httpx.Response) -> tuple[bytes, list[str | None]]:
    """The bytes of the pieces a body carries (each PIECE long but the blob's last), and the
    digest named after each."""
    count, body = int(response.headers["X-Piece-Count"]), response.content
    data, digests, at = b"", [], 0
    for position in range(count):
        size = PIECE if position < count - 1 else len(body) - count * PIECE_TRAILER_SIZE - (count - 1) * PIECE
        data += body[at:at + size]
        digests.append(parse_piece_trailer(body[at + size:at + size + PIECE_TRAILER_SIZE]))
        at += size + PIECE_TRAILER_SIZE
    assert at == len(body)
    return data, digests


def test_a_run_of_pieces_comes_in_one_body_with_each_digest(cluster, registry, registry_client):
    seed, digest = seeded(cluster, registry, registry_client)
    count = len(BLOB) // PIECE + 1
    response = httpx.get(f"{seed.upload_url}/pieces/{digest}/3", params={"count": 5}, timeout=30)
    assert response.status_code == 200
    assert response.headers["X-Piece-Count"] == "5"
    assert body_pieces(response) == (BLOB[3 * PIECE:8 * PIECE],
                                     [piece_digest(BLOB[i * PIECE:(i + 1) * PIECE]) for i in range(3, 8)])
    tail = httpx.get(f"{seed.upload_url}/pieces/{digest}/{count - 2}", params={"count": 64}, timeout=30)
    assert tail.headers["X-Piece-Count"] == "2" and body_pieces(tail)[0] == BLOB[(count - 2) * PIECE:]
    for bad in ("0", "65", "x"):
        refused = httpx.get(f"{seed.upload_url}/pieces/{digest}/0", params={"count": bad}, timeout=30)
        assert refused.status_code == 400 and "count" in refused.text


def test_an_asker_that_stops_reading_is_no_error(cluster, registry, registry_client):
    seed, digest = seeded(cluster, registry, registry_client)
    address = urlsplit(seed.upload_url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as asker:
        asker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        asker.sendall(f"GET /pieces/{digest}/0?count=64 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert asker.recv(4096).startswith(b"HTTP/1.1 200")  # 16 MiB follow; read none of them
        asker.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset on close
    wait_until(lambda: metric(seed.upload_url, "damselfly_upload_abandoned_total") == 1, 20,
               "the upload to count as abandoned")
    assert "Traceback" not in seed.log()
    assert body_pieces(httpx.get(f"{seed.upload_url}/pieces/{digest}/0", timeout=30))[0] == BLOB[:PIECE]  # serving


def test_an_asker_that_freezes_is_cut_off_and_frees_its_slot(cluster, registry, registry_client):
    """A peer that accepts no bytes (frozen, or behind a link that drops everything) must not
    hold an upload slot for as long as TCP retries: after --read-timeout it is cut off."""
    digest = registry_client.push_blob("upload/frozen", BLOB)
    seed = cluster(seed=True, extra=["--read-timeout", "1", "--upload-slots", "1"])
    assert get_blob(seed, registry.host, "upload/frozen", digest) == BLOB
    address = urlsplit(seed.upload_url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as asker:
        asker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        asker.sendall(f"GET /pieces/{digest}/0?count=64 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert asker.recv(4096).startswith(b"HTTP/1.1 200")  # 16 MiB follow; read none, keep the socket open
        wait_until(lambda: metric(seed.upload_url, "damselfly_upload_abandoned_total") == 1, 30,
                   "the frozen asker to be cut off")
        # The only slot is free again while the frozen asker still holds its socket.
        assert body_pieces(httpx.get(f"{seed.upload_url}/pieces/{digest}/1", timeout=30))[0] == BLOB[PIECE:2 * PIECE]


def test_with_an_upload_rate_a_long_queue_answers_busy_at_once(cluster, registry, registry_client):
    """Rate-limited uploads wait their turn before their headers. Once the queue is longer
    than an asker could wait (its read timeout), the seed must say busy at once."""
    digest = registry_client.push_blob("upload/rated", BLOB)
    seed = cluster(seed=True, extra=["--upload-rate", "1MB"])  # runs cut to about 5 MB: 5 s each
    assert get_blob(seed, registry.host, "upload/rated", digest) == BLOB
    address = urlsplit(seed.upload_url)
    askers: list[socket.socket] = []
    try:
        for _ in range(12):
            asker = socket.create_connection((address.hostname, address.port), timeout=30)
            askers.append(asker)
            asker.sendall(f"GET /pieces/{digest}/0?count=64 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            asker.setblocking(False)  # _status peeks without waiting
            waiting = len(askers)
            wait_until(lambda asker=asker, waiting=waiting: _status(asker) is not None
                       or metric(seed.upload_url, "damselfly_upload_active") >= waiting, 20,
                       "an answer or a place in the queue")
            if _status(asker) == b"503":
                break
        else:
            pytest.fail("twelve 5 s runs were queued at once without a refusal")
        assert len(askers) >= 3  # some were queued first
        assert metric(seed.upload_url, "damselfly_upload_refused_total", 'reason="rate_backlog"') == 1
    finally:
        for asker in askers:
            asker.close()


def _status(sock: socket.socket) -> bytes | None:
    """The status code the server has sent on ``sock`` so far, without consuming it."""
    try:
        head = sock.recv(12, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    return head[9:12] if len(head) == 12 else None


# -- in process: who may have which pieces, and what a seed trigger may ask for ----------


@web.middleware
async def _from_address(request: web.Request, handler):
    """The test's stand-in for an asker elsewhere on the network: X-Test-Remote is its address."""
    remote = request.headers.get("X-Test-Remote")
    return await handler(request.clone(remote=remote) if remote else request)


class _Reported:
    """A network whose scheduler already knows every piece."""

    async def reported(self, digest: str, indexes: range) -> None:
        pass


def _serve(tmp_path, seed_duty: SeedDuty | None = None, **kwargs):
    """An upload server (a peer's, or a seed's with ``seed_duty``) over a real blob store
    that starts no download, on loopback, with a public and a protected blob."""
    store = BlobStore(tmp_path / "store", quota=1 << 30)
    blobs = BlobService(store, source=None, sourcing=None, events=None)  # type: ignore[arg-type]
    digests = {}
    for name, protected in (("public", False), ("private", True)):
        data = name.encode() * 100_000
        digest = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
        incoming = store.new_incoming(digest)
        incoming.write_bytes(data)
        store.reserve(len(data))
        store.commit(incoming, digest, BlobMeta(len(data), protected, "https://r.example", "team/app", 0.0,
                                                piece_length_for(len(data))))
        digests[name] = (str(digest), data)
    server = UploadServer(blobs, _Reported(), seed_duty, PeerMetrics(CollectorRegistry()), CollectorRegistry(), **kwargs)
    app = server.application()
    app.middlewares.append(_from_address)
    return app, blobs, digests


def _in_process(app, scenario):
    async def main():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await scenario(client)
    return asyncio.run(main())


def test_a_stranger_cannot_tell_a_protected_blob_from_one_not_held(tmp_path):
    """Nor can a local process without a certificate, even one that names the blob's own
    origin (anyone can write that header); a member with a certificate is the
    test_outsider's TLS cluster."""
    app, _, digests = _serve(tmp_path)
    unknown = "sha256:" + "e" * 64
    forged = {ORIGIN_HEADER: "r.example/team/app"}

    async def scenario(client):
        answers = {}
        for who, headers in (("local process", forged), ("stranger", {"X-Test-Remote": "192.0.2.7", **forged}),
                             ("local process of another origin", {ORIGIN_HEADER: "yes.example/team/app"})):
            for name, digest in (("public", digests["public"][0]), ("private", digests["private"][0]),
                                 ("unknown", unknown)):
                for index in (0, 99999):  # a piece outside the blob must not tell its length either
                    response = await client.get(f"/pieces/{digest}/{index}", headers=headers)
                    body = (await response.text()).replace(digest, "<digest>")
                    answers[who, name, index] = (response.status, body)
        return answers

    answers = _in_process(app, scenario)
    assert answers["local process", "public", 0][0] == 200 and answers["stranger", "public", 0][0] == 200
    for who in ("local process", "stranger", "local process of another origin"):
        for index in (0, 99999):
            assert answers[who, "private", index] == answers[who, "unknown", index]
            assert answers[who, "private", index][0] == 404


@pytest.mark.parametrize(("body", "status", "text"), [
    ({"registry": "127.0.0.1:5000", "repository": "../../internal"}, 400, "repository"),
    ({"registry": "http://169.254.169.254", "repository": "team/app"}, 400, "registry"),
    ({"registry": "refused.example", "repository": "team/app"}, 400, "refused"),
    ({"registry": "127.0.0.1:5000", "repository": "team/app", "authorization": "Bearer x"}, 202, "accepted"),
], ids=["path-in-repository", "url-as-registry", "name-the-seed-refuses", "accepted"])
def test_a_seed_trigger_names_a_registry_the_seed_maps_itself(tmp_path, body, status, text):
    def resolve(name: str) -> str:
        if name == "refused.example":
            raise ValueError(f"{name} refused")
        return {"127.0.0.1:5000": "http://127.0.0.1:5000"}[name]

    app, blobs, _ = _serve(tmp_path, SeedDuty(resolve, could_not_start=lambda digest, reason: None,
                                                     confirm_tag=lambda confirm: None))
    asked = []

    async def prefetch(digest, origin, ranged=False):
        asked.append((str(digest), origin, ranged))

    blobs.prefetch = prefetch  # type: ignore[method-assign]
    digest = "sha256:" + "a" * 64

    async def scenario(client):
        response = await client.post(f"/api/v1/seed/{digest}", json={"length": 10, "piece_length": 10, **body})
        return response.status, await response.text()

    got_status, got_text = _in_process(app, scenario)
    assert got_status == status and text in got_text
    if status == 202:
        assert asked == [(digest, Origin("http://127.0.0.1:5000", "team/app", "Bearer x"), False)]
    else:
        assert asked == []


def test_a_peer_that_is_no_seed_refuses_triggers(tmp_path):
    app, _, _ = _serve(tmp_path, seed_duty=None)

    async def scenario(client):
        response = await client.post(f"/api/v1/seed/sha256:{'a' * 64}", json={
            "length": 10, "piece_length": 10, "registry": "r.example", "repository": "a"})
        return response.status

    assert _in_process(app, scenario) == 409
