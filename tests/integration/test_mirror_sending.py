"""How the mirror sends bytes to a client: in order after what the connection still
holds, across keep-alive requests, and never stuck on a client that stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import os
import signal
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from damselfly.mirror.sending import FileSender, SendingThreads
from tests.support.fakes import GatedRegistryFake, SilentServerFake
from testkit.wait import wait_until

MiB = 1024 * 1024


async def _connected_pair() -> tuple[asyncio.Transport, socket.socket, asyncio.AbstractServer]:
    """A server-side transport and a non-blocking client socket that reads nothing until asked.
    The transport's ``lost`` future completes when its connection is torn down."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Accept(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.lost = loop.create_future()  # type: ignore[attr-defined]
            accepted.set_result(transport)  # type: ignore[arg-type]

        def connection_lost(self, exc: Exception | None) -> None:
            accepted.result().lost.set_result(exc)  # type: ignore[attr-defined]

    server = await loop.create_server(Accept, "127.0.0.1", 0)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.setblocking(False)
    await loop.sock_connect(client, server.sockets[0].getsockname())
    return await asyncio.wait_for(accepted, 10), client, server


async def _receive(client: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    received = bytearray()
    while len(received) < count:
        chunk = await asyncio.wait_for(loop.sock_recv(client, 1 * MiB), 30)
        assert chunk, f"the connection closed after {len(received)} of {count} bytes"
        received += chunk
    return bytes(received)


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "sendfile"])
def test_file_bytes_follow_what_the_transport_still_holds(tmp_path: Path, copy: bool) -> None:
    """The headers aiohttp wrote may still sit in the transport's buffer (the client is slow):
    the file's bytes must not overtake them."""
    payload = os.urandom(5 * MiB + 123)
    path = tmp_path / "blob"
    path.write_bytes(payload)
    pending = b"h" * (16 * MiB)

    async def scenario() -> bytes:
        transport, client, server = await _connected_pair()
        try:
            transport.write(pending)
            assert transport.get_write_buffer_size() > 0, "the kernel took everything: the case is not set up"
            threads = SendingThreads(2)
            with open(path, "rb") as file:
                sender = FileSender(transport, file, threads, timeout=30, copy=copy)
                sending = asyncio.create_task(sender.send(0, len(payload)))
                received = await _receive(client, len(pending) + len(payload))
                await asyncio.wait_for(sending, 30)
                sender.close()
            threads.shutdown()
            return received
        finally:
            transport.close()
            client.close()
            server.close()

    received = asyncio.run(scenario())
    assert received[: len(pending)] == pending
    assert hashlib.sha256(received[len(pending):]).digest() == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("queued_headers", [False, True], ids=["idle-transport", "queued-headers"])
@pytest.mark.parametrize("copy", [True, False], ids=["copy", "sendfile"])
def test_a_client_that_stops_reading_is_cut_off_cleanly(tmp_path: Path, copy: bool, queued_headers: bool) -> None:
    """Cut off after the timeout, and the transport then aborts without an error, even when
    the deadline fell while the headers still waited in the transport's queue."""
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(64 * MiB))  # far more than the socket buffers hold
    errors: list[dict] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        transport, client, server = await _connected_pair()
        try:
            if queued_headers:
                transport.write(b"h" * (16 * MiB))
                assert transport.get_write_buffer_size() > 0, "the kernel took everything: the case is not set up"
            threads = SendingThreads(2)
            with open(path, "rb") as file:
                sender = FileSender(transport, file, threads, timeout=0.5, copy=copy)
                with pytest.raises(ConnectionError, match="stopped reading"):
                    await asyncio.wait_for(sender.send(0, 64 * MiB), 30)
                sender.close()
            threads.shutdown()
            transport.abort()
            await asyncio.wait_for(transport.lost, 10)  # type: ignore[attr-defined]
        finally:
            client.close()
            server.close()

    asyncio.run(scenario())
    assert errors == []


def test_with_every_thread_taken_a_cached_blob_goes_by_sendfile(tmp_path: Path) -> None:
    """One slow client per thread must not make the others wait behind them."""
    payload = os.urandom(20 * MiB + 5)
    path = tmp_path / "blob"
    path.write_bytes(payload)

    async def scenario() -> bytes:
        slow_transport, slow_client, slow_server = await _connected_pair()
        transport, client, server = await _connected_pair()
        threads = SendingThreads(1)
        try:
            with open(path, "rb") as slow_file, open(path, "rb") as file:
                slow = FileSender(slow_transport, slow_file, threads, timeout=30, copy=True)
                holding = asyncio.create_task(slow.send(0, len(payload)))  # its client reads nothing
                await wait_for_condition(lambda: threads.free == 0)
                sender = FileSender(transport, file, threads, timeout=30, copy=True)
                sending = asyncio.create_task(sender.send(0, len(payload)))
                received = await _receive(client, len(payload))
                await asyncio.wait_for(sending, 30)
                assert not holding.done(), "the slow client's copy should still hold the only thread"
                sender.close()
                slow_transport.abort()
                slow_client.close()
                with pytest.raises(ConnectionError):
                    await asyncio.wait_for(holding, 30)
                slow.close()
            return received
        finally:
            threads.shutdown()
            for closing in (transport, client, server, slow_server):
                closing.close()

    assert asyncio.run(scenario()) == payload


async def wait_for_condition(condition, deadline: float = 10) -> None:
    async with asyncio.timeout(deadline):
        while not condition():
            await asyncio.sleep(0.01)


def test_one_keep_alive_connection_carries_cold_warm_and_range_responses(damselfly, registry, registry_client) -> None:
    node = damselfly()
    data = os.urandom(9 * MiB + 7)
    digest = registry_client.push_blob("keepalive/blob", data)
    path = f"/v2/keepalive/blob/blobs/{digest}?ns={registry.host}"
    connection = http.client.HTTPConnection(node.host, node.port, timeout=30)
    try:
        for range_header, expected in [(None, data), (None, data), ("bytes=100-70000", data[100:70001]),
                                       (f"bytes={5 * MiB}-", data[5 * MiB:]), (None, data)]:
            connection.request("GET", path, headers={"Range": range_header} if range_header else {})
            response = connection.getresponse()
            body = response.read()
            assert response.status == (206 if range_header else 200)
            assert body == expected
        assert connection.sock is not None, "the mirror closed the keep-alive connection"
    finally:
        connection.close()
    assert len(registry.blob_gets(digest)) == 1


@pytest.mark.parametrize("temperature", ["cold", "warm"])
def test_the_mirror_cuts_off_a_stalled_client_and_serves_the_next(damselfly, registry, registry_client,
                                                                  temperature: str) -> None:
    node = damselfly("--read-timeout", "3")
    data = os.urandom(64 * MiB)
    digest = registry_client.push_blob("stalled/blob", data)
    path = f"/v2/stalled/blob/blobs/{digest}?ns={registry.host}"
    if temperature == "warm":
        assert hashlib.sha256(_get(node, path)).hexdigest() == digest[7:]
    stalled = socket.create_connection((node.host, node.port))
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode())
        assert stalled.recv(12) == b"HTTP/1.1 200"
        wait_until(lambda: node.metric("damselfly_proxy_active_streams") == 0, 30, "the stalled stream to be cut off")
        assert "stopped reading" in node.log()
    finally:
        stalled.close()
    assert hashlib.sha256(_get(node, path)).hexdigest() == digest[7:]
    assert len(registry.blob_gets(digest)) == 1


def _get(node, path: str) -> bytes:
    connection = http.client.HTTPConnection(node.host, node.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


def test_a_client_that_stops_reading_a_passed_through_answer_is_cut_off(damselfly) -> None:
    """Manifests and the rest stream from upstream through aiohttp's writer: its drain must
    have a deadline too. The fake answers every GET with 16 MiB, far more than socket buffers."""
    fake = GatedRegistryFake(os.urandom(16 * MiB), gate_at=16 * MiB)
    fake.gate.set()
    fake.start()
    try:
        node = damselfly("--registry", f"big.test=http://{fake.host}", "--read-timeout", "3")
        path = "/v2/big/answer/tags/list?ns=big.test"
        with socket.create_connection((node.host, node.port)) as stalled:
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode())
            assert stalled.recv(12) == b"HTTP/1.1 200"
            wait_until(lambda: "stopped reading /v2/big/answer/tags/list" in node.log(), 30,
                       "the stalled client to be cut off")
        assert len(_get(node, path)) == 16 * MiB
    finally:
        fake.stop()


def _answered(connection: http.client.HTTPConnection, method: str, path: str, status: int,
              **request: object) -> http.client.HTTPResponse:
    connection.request(method, path, **request)  # type: ignore[arg-type]
    answer = connection.getresponse()
    answer.read()
    assert answer.status == status, answer.status
    return answer


def _through_mirror(location: str, registry) -> str:
    """The path and query of a registry's upload ``location``, with ``ns``: sent through the mirror."""
    upload = location.split(registry.host, 1)[-1]
    return upload + ("&" if "?" in upload else "?") + f"ns={registry.host}"


def _start_upload(node, registry, name: str) -> str:
    connection = http.client.HTTPConnection(node.host, node.port, timeout=30)
    try:
        started = _answered(connection, "POST", f"/v2/{name}/blobs/uploads/?ns={registry.host}", 202)
    finally:
        connection.close()
    return _through_mirror(started.getheader("Location", ""), registry)


def _stored(registry, name: str, digest: str) -> bytes:
    with urllib.request.urlopen(f"{registry.url}/v2/{name}/blobs/{digest}", timeout=30) as stored:
        return stored.read()


@pytest.mark.parametrize("chunked", [False, True], ids=["put", "chunked-patch"])
def test_a_push_through_the_mirror_reaches_the_registry(damselfly, registry, chunked: bool) -> None:
    """In one PUT, or as docker sends it: a chunked PATCH (no Content-Length), then a PUT."""
    node = damselfly("--read-timeout", "2")
    data = os.urandom(5 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upload = _start_upload(node, registry, "pushed/blob")
    connection = http.client.HTTPConnection(node.host, node.port, timeout=30)
    try:
        if chunked:
            patched = _answered(connection, "PATCH", upload, 202, encode_chunked=True,
                                body=(data[i:i + MiB] for i in range(0, len(data), MiB)))
            _answered(connection, "PUT", f"{_through_mirror(patched.getheader('Location', ''), registry)}"
                                         f"&digest={digest}", 201)
        else:
            _answered(connection, "PUT", f"{upload}&digest={digest}", 201, body=data)
    finally:
        connection.close()
    assert _stored(registry, "pushed/blob", digest) == data


def test_an_upstream_that_stops_taking_a_pushed_body_gets_the_client_504(damselfly) -> None:
    """The other side of a push: an upstream that stops reading must not hold the handler either."""
    silent = SilentServerFake()  # accepts nothing: what the mirror sends fills the socket buffers, then waits
    try:
        node = damselfly("--registry", f"stuck.test=http://{silent.host}", "--read-timeout", "2")
        with socket.create_connection((node.host, node.port)) as client:
            client.settimeout(30)
            size = 256 * MiB
            client.sendall((f"PATCH /v2/stuck/blob/blobs/uploads/x?ns=stuck.test HTTP/1.1\r\nHost: mirror\r\n"
                            f"Content-Length: {size}\r\n\r\n").encode())
            chunk = bytes(MiB)

            def send_body() -> None:
                with contextlib.suppress(OSError):  # the mirror answers and closes before the body is all sent
                    for _ in range(size // MiB):
                        client.sendall(chunk)

            sender = threading.Thread(target=send_body, daemon=True)
            sender.start()
            status_line = client.recv(12)
            assert status_line == b"HTTP/1.1 504", status_line
        sender.join(30)
        assert "stopped taking the request body" in node.log()
    finally:
        silent.close()


def test_a_client_that_stops_sending_a_pushed_body_gets_408(damselfly, registry) -> None:
    """A push through the mirror streams the client's body upstream: a client that stops
    sending halfway must not hold the handler and the registry's upload for ever."""
    node = damselfly("--read-timeout", "2")
    upload = _start_upload(node, registry, "stalled/push")
    with socket.create_connection((node.host, node.port)) as stalled:
        stalled.settimeout(30)
        stalled.sendall((f"PATCH {upload} HTTP/1.1\r\nHost: mirror\r\n"
                         f"Content-Type: application/octet-stream\r\nContent-Length: {4 * MiB}\r\n\r\n").encode()
                        + os.urandom(64 * 1024))
        status_line = stalled.recv(12)  # nothing more is sent: the mirror must answer by itself
        assert status_line == b"HTTP/1.1 408", status_line
    assert "stopped sending the body of PATCH" in node.log()
    assert _get(node, "/v2/") == b"{}"  # and it goes on serving


def test_sigterm_with_a_stalled_client_exits_within_five_seconds(damselfly, registry, registry_client) -> None:
    """A client that reads nothing must not hold the daemon's exit for long."""
    node = damselfly()
    digest = registry_client.push_blob("stalled/exit", os.urandom(64 * MiB))
    path = f"/v2/stalled/exit/blobs/{digest}?ns={registry.host}"
    assert len(_get(node, path)) == 64 * MiB  # cached: the stalled client gets it from the file
    with socket.create_connection((node.host, node.port)) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode())
        assert stalled.recv(12) == b"HTTP/1.1 200"
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(timeout=8) == 0  # 5 s of grace (2 x SHUTDOWN_GRACE), 3 s of margin
