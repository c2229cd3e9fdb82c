"""The mount service's protocol: what it answers to requests it cannot use (no mount is made)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

from damselfly.nydus import service as service_module
from damselfly.nydus.service import MountService, ServiceClient, ServiceError


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MountService]:
    monkeypatch.setattr(service_module._Handler, "timeout", 0.5)  # a stalled body fails fast
    service = MountService(tmp_path / "s.sock")

    def loop() -> None:
        while not service.stopping:
            service.handle_request()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stopping = True
        thread.join(timeout=5)
        service.server_close()


def _exchange(path: Path, raw: bytes) -> tuple[int, bytes]:
    """Send raw bytes and read the answer until the service closes: (status, body)."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(10)
        connection.connect(str(path))
        connection.sendall(raw)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_requests_it_cannot_use_get_a_status_and_one_line(served: MountService, tmp_path: Path) -> None:
    client = ServiceClient(served.path, timeout=10)
    assert client.healthy()
    cases = [
        ({"ref": "r/x:1", "mountpoint": "/mnt/a\0b", "cache_dir": "/tmp/c"}, "'mountpoint' must be an absolute path"),
        ({"ref": "r/x:1"}, "'mountpoint' is missing"),
        ({"ref": "r/x:1", "mountpoint": "/mnt/x", "prefetch": "yes"}, "'prefetch' must be a bool"),
        ({"mountpoint": "/mnt/x", "cache-dir": "/c"}, "unknown field 'cache-dir'"),
        ({"ref": "r/x:1", "mountpoint": "/mnt/\ud800"}, "'mountpoint' is not a valid path"),
        ({"ref": "r/x:1", "mountpoint": "/mnt/x", "cache_quota": "lots"}, "invalid size 'lots'"),
        ({"ref": "r/x:1", "mountpoint": "/mnt/x", "cache_quota": 0}, "cache quota 0 must be at least one byte"),
        ({"ref": "r/x:1", "mountpoint": "/mnt/x", "cache_quota": True}, "'cache_quota' must be a number of bytes"),
        ({"ref": "r/x:1", "mountpoint": str(tmp_path / "missing")}, "is not a directory"),  # 409: the mount failed
    ]
    for body, message in cases:
        with pytest.raises(ServiceError, match=message):
            client.call("/mount", body)
    assert _exchange(served.path, b"POST /mount HTTP/1.1\r\nContent-Length: 5\r\n\r\n[1,2]")[0] == 400
    nested = b"[" * 50000
    assert _exchange(served.path, b"POST /mount HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(nested), nested))[0] == 400
    assert _exchange(served.path, b"POST /nowhere HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")[0] == 404
    status, body = _exchange(served.path, b"POST /umount HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"mount")
    assert status == 408 and b"did not come" in body
    assert client.healthy(), "the service goes on serving"


def test_a_second_service_and_a_file_in_the_way_are_refused(served: MountService, tmp_path: Path) -> None:
    with pytest.raises(ServiceError, match="already listens"):
        MountService(served.path)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ServiceError, match="exists and is not a socket"):
        MountService(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"
    assert oct(served.path.stat().st_mode & 0o777) == "0o600"
