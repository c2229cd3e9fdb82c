"""Helpers the nydus tests share: the damselfly command, and the rootfs containerd unpacks."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.support.containerd import Containerd


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
