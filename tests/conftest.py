"""Fixtures that start the real servers the tests use."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

import pytest

from testkit.containerd import Containerd
from testkit.daemon import Damselfly
from testkit.proxy import forget_proxies
from testkit.registry import Registry, RegistryClient

REQUIRED_TOOLS = {
    "docker-registry": "docker-registry",
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "busybox": "busybox-static",
    "curl": "curl",
    "ip": "iproute2",
    "tc": "iproute2",
    "fsck.erofs": "erofs-utils",
    "fusermount3": "fuse3",
    "losetup": "mount",
    "tinyproxy": "tinyproxy",
    "openssl": "openssl",
}


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)]
    if missing:
        raise pytest.UsageError("the tests need real servers; install: " + ", ".join(missing) + " (see .ci/run)")
    forget_proxies(os.environ)  # every server a test talks to is its own, on loopback or in its own namespaces


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def registry_client(registry: Registry) -> RegistryClient:
    return RegistryClient(registry.url)


@pytest.fixture
def damselfly(tmp_path: Path, registry: Registry) -> Iterator[Callable[..., Damselfly]]:
    """Start Damselfly subprocesses mapped to the session registry; all stopped afterwards."""
    started: list[Damselfly] = []

    def start(*args: str, data_dir: Path | None = None, port: int | None = None,
              env: dict[str, str] | None = None) -> Damselfly:
        node = Damselfly(data_dir or tmp_path / f"data{len(started)}",
                         ["--registry", f"{registry.host}={registry.url}", *args], env=env or {})
        if port:
            node.port = port
        started.append(node.start())
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Containerd]]:
    started: list[Containerd] = []

    def start() -> Containerd:
        # Short paths: containerd's socket path must stay under the 108-byte limit.
        workdir = Path(tmp_path_factory.mktemp("ctd", numbered=True))
        started.append(Containerd(workdir).start())
        return started[-1]

    yield start
    for instance in started:
        instance.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("CI") == "true":
        for item in items:
            if item.get_closest_marker("skip") or item.get_closest_marker("skipif"):
                raise pytest.UsageError(f"{item.nodeid} is marked to skip; no test may be skipped in CI")
