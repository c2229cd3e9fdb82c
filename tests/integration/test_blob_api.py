"""Blob GET/HEAD through the mirror against a real docker-registry: ranges, cold and warm,
bad input, failing upstreams, one upstream GET per blob, streaming."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.fakes import GatedRegistryFake, SilentServerFake
from testkit.wait import free_port, wait_until

MiB = 1024 * 1024
SIZE = 10 * MiB + 12345  # three 4 MiB pieces, the last one short


@pytest.fixture
def node(damselfly):
    return damselfly()


def blob_url(node, name: str, digest: str) -> str:
    return f"{node.url}/v2/{name}/blobs/{digest}"


# (Range header, expected status, slice of the blob expected in the body)
RANGE_CASES = [
    (None, 200, slice(None)),
    ("bytes=0-0", 206, slice(0, 1)),
    ("bytes=100-199", 206, slice(100, 200)),
    ("bytes=5000000-", 206, slice(5000000, None)),
    (f"bytes={4 * MiB - 1}-{4 * MiB}", 206, slice(4 * MiB - 1, 4 * MiB + 1)),  # across a piece boundary
    ("bytes=-1000", 206, slice(SIZE - 1000, None)),
    (f"bytes=-{SIZE + 10}", 206, slice(None)),
    ("bytes=10-99999999999", 206, slice(10, None)),
    (f"bytes={SIZE}-", 416, None),
    ("bytes=-0", 416, None),
    ("bytes=5-2", 400, None),
    ("bytes=0-1,5-6", 400, None),
    ("items=0-5", 400, None),
    ("bytes=abc", 400, None),
]


@pytest.mark.parametrize("temperature", ["cold", "warm"])
@pytest.mark.parametrize("range_header,status,expected", RANGE_CASES, ids=[c[0] or "none" for c in RANGE_CASES])
def test_range_cases(node, registry, registry_client, temperature, range_header, status, expected):
    data = os.urandom(SIZE)
    digest = registry_client.push_blob("ranges/blob", data)
    url = blob_url(node, "ranges/blob", digest)
    params = {"ns": registry.host}
    if temperature == "warm":
        assert httpx.get(url, params=params, timeout=30).content == data
    headers = {"Range": range_header} if range_header else {}
    response = httpx.get(url, params=params, headers=headers, timeout=30)
    assert response.status_code == status, response.text[:200]
    if expected is not None:
        body = data[expected]
        assert response.content == body
        assert int(response.headers["Content-Length"]) == len(body)
        assert response.headers["Docker-Content-Digest"] == digest
        if status == 206:
            first = expected.start or 0 if expected.start is not None else 0
            assert response.headers["Content-Range"] == f"bytes {first}-{first + len(body) - 1}/{SIZE}"
    elif status == 416:
        assert response.headers["Content-Range"] == f"bytes */{SIZE}"
    else:
        assert response.json()["errors"][0]["code"] == "RANGE_INVALID"
    # Cold or warm, the whole blob ends in the cache from one upstream GET and is served intact.
    wait_until(lambda: httpx.get(url, params=params, timeout=30).content == data, 30, "the blob to be cached whole")
    assert len(registry.blob_gets(digest)) == 1


@pytest.mark.parametrize("temperature", ["cold", "warm"])
def test_head(node, registry, registry_client, temperature):
    data = os.urandom(3 * MiB)
    digest = registry_client.push_blob("head/blob", data)
    url = blob_url(node, "head/blob", digest)
    if temperature == "warm":
        httpx.get(url, params={"ns": registry.host}, timeout=30).raise_for_status()
    response = httpx.head(url, params={"ns": registry.host}, timeout=30)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(data)
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.content == b""
    missing = "sha256:" + hashlib.sha256(b"not pushed").hexdigest()
    assert httpx.head(blob_url(node, "head/blob", missing), params={"ns": registry.host}, timeout=30).status_code == 404


GOOD_DIGEST = "sha256:" + "a" * 64
BAD_INPUT = [
    # (raw path and query, expected status, expected OCI error code)
    (f"/v2/foo/blobs/sha256:{'a' * 63}", 400, "DIGEST_INVALID"),
    (f"/v2/foo/blobs/sha256:{'A' * 64}", 400, "DIGEST_INVALID"),
    (f"/v2/foo/blobs/md5:{'a' * 32}", 400, "DIGEST_INVALID"),
    ("/v2/foo/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd", 400, "DIGEST_INVALID"),
    (f"/v2/Foo/blobs/{GOOD_DIGEST}", 400, "NAME_INVALID"),
    (f"/v2/foo//bar/blobs/{GOOD_DIGEST}", 400, "NAME_INVALID"),
    (f"/v2/%2e%2e/%2e%2e/blobs/{GOOD_DIGEST}", 400, "NAME_INVALID"),
    (f"/v2/{'a' * 300}/blobs/{GOOD_DIGEST}", 400, "NAME_INVALID"),
    ("/v2/foo/manifests/-notatag", 400, "TAG_INVALID"),
    ("/v2/foo/manifests/sha256:1234", 400, "DIGEST_INVALID"),
]


@pytest.mark.parametrize("path,status,code", BAD_INPUT, ids=[c[0][:60] for c in BAD_INPUT])
def test_bad_input_is_refused_with_an_oci_error(node, registry, path, status, code):
    separator = "&" if "?" in path else "?"
    response = httpx.get(f"{node.url}{path}{separator}ns={registry.host}", timeout=10)
    assert response.status_code == status
    assert response.json()["errors"][0]["code"] == code
    assert httpx.get(f"{node.url}/healthy", timeout=5).status_code == 200


def test_requests_without_a_registry_or_with_a_bad_one(node):
    for params, headers in [({}, {}), ({"ns": "evil.example/path"}, {}), ({}, {"X-Dragonfly-Registry": "ftp://x"})]:
        response = httpx.get(blob_url(node, "foo", GOOD_DIGEST), params=params, headers=headers, timeout=10)
        assert response.status_code == 400
        assert response.json()["errors"][0]["code"] == "UNSUPPORTED"
    assert httpx.put(f"{node.url}/v2/", timeout=10).status_code == 405
    nothing_written = [p for p in (node.data_dir / "blobs").rglob("*") if p.is_file()]
    assert nothing_written == []


def test_v2_ping_and_manifest_passthrough(node, registry, registry_client):
    ping = httpx.get(f"{node.url}/v2/", timeout=10)
    assert ping.status_code == 200 and ping.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = registry_client.push_blob("manifests/one", config)
    manifest = (b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":'
                b'{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"' + config_digest.encode()
                + b'","size":' + str(len(config)).encode() + b'},"layers":[]}')
    digest = registry_client.push_manifest("manifests/one", "v1", manifest, "application/vnd.oci.image.manifest.v1+json")
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    for reference in ("v1", digest):
        url = f"{node.url}/v2/manifests/one/manifests/{reference}"
        got = httpx.get(url, params={"ns": registry.host}, headers=accept, timeout=10)
        assert got.status_code == 200 and got.content == manifest
        assert got.headers["Docker-Content-Digest"] == digest
        assert got.headers["Content-Type"] == "application/vnd.oci.image.manifest.v1+json"
        head = httpx.head(url, params={"ns": registry.host}, headers=accept, timeout=10)
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(manifest)
    missing = httpx.get(f"{node.url}/v2/manifests/one/manifests/nope", params={"ns": registry.host}, timeout=10)
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"


def test_unreachable_and_silent_upstreams_fail_fast_with_502_and_504(damselfly):
    closed_port = free_port()
    silent = SilentServerFake()
    try:
        node = damselfly("--registry", f"closed.test=http://127.0.0.1:{closed_port}",
                         "--registry", f"silent.test=http://{silent.host}", "--read-timeout", "2", "--connect-timeout", "2")
        for ns, status in [("closed.test", 502), ("silent.test", 504)]:
            for path in (f"/v2/foo/blobs/{GOOD_DIGEST}", "/v2/foo/manifests/latest"):
                started = time.monotonic()
                response = httpx.get(f"{node.url}{path}", params={"ns": ns}, timeout=30)
                assert response.status_code == status, (ns, path, response.text)
                assert time.monotonic() - started < 10
                assert response.json()["errors"][0]["message"]
        assert httpx.get(f"{node.url}/healthy", timeout=5).status_code == 200
    finally:
        silent.close()


def corrupt_in_registry(registry, digest: str) -> None:
    """Flip a byte of the blob in docker-registry's own storage: it will serve wrong bytes."""
    hexpart = digest.removeprefix("sha256:")
    path = registry.workdir / "storage/docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("size", [100 * 1024, 9 * MiB])
def test_digest_mismatch_keeps_nothing_and_fails_the_client(node, registry, registry_client, size):
    data = os.urandom(size)
    digest = registry_client.push_blob("corrupt/blob", data)
    corrupt_in_registry(registry, digest)
    url = blob_url(node, "corrupt/blob", digest)
    for attempt in (1, 2):
        try:
            response = httpx.get(url, params={"ns": registry.host}, timeout=30)
        except httpx.HTTPError:
            pass  # the body was cut off before its end: the client knows it is incomplete
        else:
            assert response.status_code == 502, "a wrong blob must never be answered in full"
            assert "digest mismatch" in response.json()["errors"][0]["message"]
        assert len(registry.blob_gets(digest)) == attempt, "nothing was kept, so the next request downloads again"
    assert "digest mismatch" in node.log()
    assert node.metric("damselfly_download_failures_total", 'reason="digest_mismatch"') == 2
    assert not any((node.data_dir / "blobs").rglob(digest.removeprefix("sha256:")))


def test_many_clients_one_upstream_get_and_bytes_stream_before_the_blob_is_complete(damselfly):
    data = os.urandom(24 * MiB)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fake = GatedRegistryFake(data, gate_at=12 * MiB).start()
    try:
        node = damselfly("--registry", f"gated.test=http://{fake.host}")
        url = blob_url(node, "stream/blob", digest)

        received = [0] * 6

        def read(index: int) -> bytes:
            chunks = []
            with httpx.stream("GET", url, params={"ns": "gated.test"}, timeout=60) as response:
                assert response.status_code == 200
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    received[index] += len(chunk)
            return b"".join(chunks)

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(read, i) for i in range(6)]
            # The upstream holds back the second half: every client must get the first pieces anyway.
            wait_until(lambda: min(received) >= 8 * MiB, 30, "every client to receive 8 MiB while the upstream is paused")
            assert not any(f.done() for f in futures)
            fake.gate.set()
            bodies = [f.result(timeout=60) for f in futures]
        assert all(body == data for body in bodies)
        assert fake.blob_gets == 1
    finally:
        fake.stop()


def test_process_survives_a_client_that_hangs_up_mid_blob(node, registry, registry_client):
    data = os.urandom(32 * MiB)
    digest = registry_client.push_blob("hangup/blob", data)
    url = blob_url(node, "hangup/blob", digest)
    with httpx.stream("GET", url, params={"ns": registry.host}, timeout=30) as response:
        next(response.iter_bytes())
    wait_until(lambda: node.metric("damselfly_proxy_active_streams") == 0, 20, "the stream to be released")
    assert hashlib.sha256(httpx.get(url, params={"ns": registry.host}, timeout=30).content).hexdigest() == digest[7:]
    assert len(registry.blob_gets(digest)) == 1


def test_a_registry_that_redirects_blobs_to_storage_is_followed_without_the_callers_credentials(tmp_path):
    """docker-registry's redirect middleware sends blob GETs to a storage host (as S3 or a
    CDN would); the mirror follows the 307 and does not hand the caller's token to that host."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler

    from testkit.daemon import Damselfly
    from testkit.processes import ThreadedHTTPServer
    from testkit.registry import Registry, RegistryClient

    storage_port = free_port()
    registry = Registry(tmp_path / "registry", extra_config={"middleware": {"storage": [
        {"name": "redirect", "options": {"baseurl": f"http://127.0.0.1:{storage_port}/"}}]}}).start()
    storage_requests: list[tuple[str, str | None]] = []

    class StorageHost(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            storage_requests.append((self.path, self.headers.get("Authorization")))
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    storage = ThreadedHTTPServer(partial(StorageHost, directory=str(tmp_path / "registry/storage")), storage_port)
    node = None
    try:
        data = os.urandom(5 * MiB + 3)
        digest = RegistryClient(registry.url).push_blob("redirect/blob", data)
        assert httpx.get(f"{registry.url}/v2/redirect/blob/blobs/{digest}").status_code == 307
        node = Damselfly(tmp_path / "data", ["--registry", f"{registry.host}={registry.url}"]).start()
        response = httpx.get(f"{node.url}/v2/redirect/blob/blobs/{digest}", params={"ns": registry.host},
                             headers={"Authorization": "Bearer caller-token"}, timeout=30)
        assert response.status_code == 200 and response.content == data
        fetched = [auth for path, auth in storage_requests if digest[7:] in path]
        assert fetched == [None], "one storage GET, without the caller's token"
    finally:
        if node:
            node.stop()
        storage.stop()
        registry.stop()
