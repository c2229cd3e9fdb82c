"""Hosts as network namespaces on one bridge, each link shaped with tc.

Every host gets a veth pair: one end in its namespace (``eth0``, address 10.77.N.x/24),
the other on the bridge in the root namespace, which also holds 10.77.N.1 so the
harness can reach every host. Traffic into a host is shaped on the bridge-side end,
traffic out of it on ``eth0``: a host's rate limits both its downloads and uploads.
Everything is created under one run-unique prefix and removed by ``close()``, which is
idempotent; ``remove_stale()`` clears what a killed run left behind.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from dataclasses import dataclass, field

PREFIX = "dfly"
_runs = itertools.count()


def _next_run_id() -> str:
    """Unique per network in this process: the kernel frees a deleted namespace's links lazily."""
    return f"{os.getpid() % 1000}{next(_runs) % 10}"


class NetnsError(RuntimeError):
    """A command that builds the network failed; the message says which and why."""


def _run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetnsError("the cluster needs root: it creates network namespaces, links and tc qdiscs")


def shape(device: str, rate: str | None, delay: str | None, netns: str | None = None) -> None:
    """Egress of ``device``: optional netem delay, then a token bucket at ``rate``."""
    exec_in = ["ip", "netns", "exec", netns] if netns else []
    parent = ["root"]
    if delay:
        _run(*exec_in, "tc", "qdisc", "add", "dev", device, "root", "handle", "1:", "netem", "delay", delay)
        parent = ["parent", "1:"]
    if rate:
        _run(*exec_in, "tc", "qdisc", "add", "dev", device, *parent, "handle", "2:", "tbf", "rate", rate,
             "burst", "256kb", "latency", "50ms")


@dataclass
class Host:
    name: str
    netns: str
    address: str
    link: str = ""  # the bridge-side end of its veth pair

    def command(self, *cmd: str) -> list[str]:
        """``cmd`` to run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    def network_only(self, *cmd: str) -> list[str]:
        """``cmd`` in this host's network namespace but the root mount namespace (``ip netns exec``
        gives each command a private one), so that the mounts it makes are seen by everyone."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]

    def popen(self, *cmd: str, **kwargs: object) -> subprocess.Popen:
        return subprocess.Popen(self.command(*cmd), **kwargs)  # type: ignore[call-overload]

    def run(self, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*cmd), capture_output=True, text=True, timeout=timeout)


@dataclass
class Network:
    """A bridge and the hosts on it; ``subnet`` is the first three octets (10.77.N)."""

    run_id: str = field(default_factory=lambda: _next_run_id())
    subnet: str = "10.77.0"
    hosts: list[Host] = field(default_factory=list)
    _bridge_up: bool = False

    @property
    def bridge(self) -> str:
        return f"{PREFIX}{self.run_id}br"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def _ensure_bridge(self) -> None:
        if self._bridge_up:
            return
        require_root()
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._bridge_up = True
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str, rate: str | None = None, delay: str | None = None) -> Host:
        if not re.fullmatch(r"[a-z0-9]{1,8}", name):
            raise ValueError(f"host name {name!r}: 1-8 lowercase letters or digits")
        self._ensure_bridge()
        index = len(self.hosts) + 10
        host = Host(name, f"{PREFIX}{self.run_id}-{name}", f"{self.subnet}.{index}")
        outside = f"{PREFIX}{self.run_id}{name}"[:15]  # interface names have at most 15 characters
        host.link = outside
        _run("ip", "netns", "add", host.netns)
        self.hosts.append(host)
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _run("ip", "link", "set", outside, "master", self.bridge, "up")
        _run(*host.command("ip", "addr", "add", f"{host.address}/24", "dev", "eth0"))
        _run(*host.command("ip", "link", "set", "eth0", "up"))
        _run(*host.command("ip", "link", "set", "lo", "up"))
        _run(*host.command("ip", "route", "add", "default", "via", self.gateway))
        shape(outside, rate, delay)  # into the host
        shape("eth0", rate, delay, netns=host.netns)  # out of the host
        return host

    def close(self) -> None:
        """Remove every namespace, link and the bridge of this run (safe to call twice)."""
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.link], capture_output=True)  # both ends, at once
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        self.hosts.clear()
        if self._bridge_up:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
            self._bridge_up = False

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_stale() -> list[str]:
    """Delete namespaces and bridges left by an earlier run that was killed."""
    removed = []
    for line in _run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX) and re.fullmatch(rf"{PREFIX}\d+-[a-z0-9]+", name):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    for line in _run("ip", "-o", "link", "show", "type", "bridge").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if re.fullmatch(rf"{PREFIX}\d+br", name):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
            removed.append(name)
    return removed
