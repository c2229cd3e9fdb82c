"""A seed peer's upload server on loopback: runs of pieces in one body, bad counts, and an
asker that stops reading halfway."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from damselfly.p2p.pieces import piece_digest, piece_length_for
from tests.integration.test_p2p_cluster import cluster, get_blob  # noqa: F401 - the fixture, shared
from tests.support.processes import metric
from tests.support.wait import wait_until

MiB = 1024 * 1024
BLOB = os.urandom(40 * MiB + 123)  # 256 KiB pieces, the last one short
PIECE = piece_length_for(len(BLOB))


def seeded(cluster, registry, registry_client):  # noqa: F811 - the fixture
    digest = registry_client.push_blob("upload/runs", BLOB)
    seed = cluster(seed=True)
    assert get_blob(seed, registry.host, "upload/runs", digest) == BLOB
    return seed, digest


def test_a_run_of_pieces_comes_in_one_body_with_each_digest(cluster, registry, registry_client):  # noqa: F811
    seed, digest = seeded(cluster, registry, registry_client)
    count = len(BLOB) // PIECE + 1
    response = httpx.get(f"{seed.upload_url}/pieces/{digest}/3", params={"count": 5}, timeout=30)
    assert response.status_code == 200
    assert response.headers["X-Piece-Count"] == "5"
    assert response.content == BLOB[3 * PIECE:8 * PIECE]
    assert response.headers["X-Piece-Digest"].split(",") == [
        piece_digest(BLOB[i * PIECE:(i + 1) * PIECE]) for i in range(3, 8)]
    tail = httpx.get(f"{seed.upload_url}/pieces/{digest}/{count - 2}", params={"count": 64}, timeout=30)
    assert tail.headers["X-Piece-Count"] == "2" and tail.content == BLOB[(count - 2) * PIECE:]
    for bad in ("0", "65", "x"):
        refused = httpx.get(f"{seed.upload_url}/pieces/{digest}/0", params={"count": bad}, timeout=30)
        assert refused.status_code == 400 and "count" in refused.text


def test_an_asker_that_stops_reading_is_no_error(cluster, registry, registry_client):  # noqa: F811
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
    assert httpx.get(f"{seed.upload_url}/pieces/{digest}/0", timeout=30).content == BLOB[:PIECE]  # still serving


def test_an_asker_that_freezes_is_cut_off_and_frees_its_slot(cluster, registry, registry_client):  # noqa: F811
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
        assert httpx.get(f"{seed.upload_url}/pieces/{digest}/1", timeout=30).content == BLOB[PIECE:2 * PIECE]


def test_with_an_upload_rate_a_long_queue_answers_busy_at_once(cluster, registry, registry_client):  # noqa: F811
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
