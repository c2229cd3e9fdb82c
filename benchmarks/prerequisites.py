"""The Debian packages each benchmark needs, checked before it starts.

Without them a benchmark dies midway with an error that names a library or a command
("Unable to find libfuse") rather than the package to install. As root the missing
packages are installed, as scripts/test does; otherwise the benchmark stops at once
with one line naming them and the command that installs them.
"""

from __future__ import annotations

import os
import subprocess

import click
from rich.console import Console

MIRROR_PACKAGES = ("docker-registry", "curl", "nginx-light")
P2P_PACKAGES = ("docker-registry", "curl")
# The cluster harness: containerd and runc run the containers; ip and tc (iproute2) build the
# namespaces and shape the links; nsenter and mount (util-linux) run the nydus mounts, which
# need fuse3 (libfuse and fusermount3) and erofs-utils; the small image is busybox-static, the
# python, nginx and large images are built with debootstrap and tar; the preheat scenario's
# manager and scheduler share a redis-server.
CLUSTER_PACKAGES = ("containerd", "runc", "docker-registry", "curl", "iproute2", "util-linux", "fuse3", "erofs-utils",
                    "busybox-static", "debootstrap", "tar", "redis-server")

console = Console()


def missing_packages(packages: tuple[str, ...]) -> list[str]:
    """Those of ``packages`` dpkg does not list as installed (all of them off Debian)."""
    try:
        listed = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Status}\n", *packages],
                                capture_output=True, text=True).stdout
    except FileNotFoundError:
        return list(packages)
    installed = {line.split()[0] for line in listed.splitlines() if line.endswith(" install ok installed")}
    return [package for package in packages if package not in installed]


def require_packages(*packages: str) -> None:
    """Install the missing ones of ``packages`` as root, or stop with the command that would."""
    missing = missing_packages(packages)
    if not missing:
        return
    command = f"apt-get update && apt-get install -y --no-install-recommends {' '.join(missing)}"
    if os.geteuid() != 0:
        raise click.ClickException(f"missing Debian packages {', '.join(missing)}; as root run: {command}")
    console.print(f"installing Debian packages: {' '.join(missing)}")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    for step in (["apt-get", "update", "-qq"], install):
        result = subprocess.run(step, capture_output=True, text=True, env=environment)
        if result.returncode != 0:
            reason = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise click.ClickException(f"{' '.join(step)} failed ({reason[0]}); install {', '.join(missing)} and retry")
