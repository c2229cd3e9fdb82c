"""Helpers the nydus tests share: the damselfly command, the mount service, and the rootfs
containerd unpacks."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from damselfly.nydus.service import ServiceClient
from testkit.containerd import Containerd
from testkit.processes import stop_process
from testkit.wait import wait_until


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``damselfly ARGS`` as a user runs it; with ``check``, a failure shows its stderr."""
    result = subprocess.run([sys.executable, "-m", "damselfly", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@contextmanager
def oci_rootfs(ctr: Containerd, source: str, path: Path) -> Iterator[Path]:
    """The OCI image's root filesystem as containerd unpacks it, mounted read-only at ``path``."""
    ctr.ctr("images", "pull", "--plain-http", source, timeout=300)
    path.mkdir()
    ctr.ctr("images", "mount", source, str(path))
    try:
        yield path
    finally:
        ctr.ctr("images", "unmount", str(path), check=False)


@dataclass
class MountServiceProcess:
    """``damselfly nydus serve`` on ``socket`` (its log beside it, as ``.log``), started as a user would."""

    socket: Path
    wrap: list[str] = field(default_factory=list)  # e.g. nsenter --net=..., for a node's network
    env: dict[str, str] | None = None  # None: this process's environment
    process: subprocess.Popen | None = None

    @property
    def client(self) -> ServiceClient:
        return ServiceClient(self.socket, timeout=120)

    @property
    def log_path(self) -> Path:
        return self.socket.with_suffix(".log")

    def start(self) -> "MountServiceProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.wrap, sys.executable, "-m", "damselfly", "nydus", "serve", "--socket", str(self.socket)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        try:
            wait_until(self._serving, 20, f"the mount service on {self.socket}")
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _serving(self) -> bool:
        if not self.running():
            raise RuntimeError(f"the mount service exited: {self.log_path.read_text(errors='replace')[-2000:]}")
        return ServiceClient(self.socket, timeout=1).healthy()

    def stop(self) -> None:
        stop_process(self.process)

    def stop_with(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)
        self.process.wait(timeout=20)
