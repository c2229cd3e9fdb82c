"""A cluster on loopback: a scheduler, seed peers and peers, each a separate process."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from testkit.daemon import Damselfly
from testkit.processes import metric, stop_process, verify_for, wait_healthy
from testkit.tls import tls_dir
from testkit.wait import free_port


@dataclass
class SchedulerProcess:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    host: str = "127.0.0.1"
    wrap: list[str] = field(default_factory=list)  # e.g. ip netns exec NS
    tls: bool = False  # serve the API over mutual TLS with a certificate of this run's CA
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> "SchedulerProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"scheduler-{self.port}.log", "ab")
        tls = ["--tls-dir", str(tls_dir(f"scheduler-{self.port}", "scheduler"))] if self.tls else []
        self.process = subprocess.Popen([*self.wrap, sys.executable, "-m", "damselfly", "scheduler", "--listen",
                                         f"{self.host}:{self.port}", *tls, *self.extra],
                                        stdout=log, stderr=subprocess.STDOUT)
        wait_healthy(self.process, self.url, "the scheduler")
        return self

    def client(self) -> httpx.Client:
        """A client of the scheduler API, a cluster member when the scheduler speaks TLS."""
        return httpx.Client(base_url=self.url, timeout=10, verify=verify_for(self.url))

    def stop(self, kill: bool = False) -> None:
        stop_process(self.process, kill)

    def metric(self, name: str, labels: str = "") -> float:
        return metric(self.url, name, labels)


def start_peer(workdir: Path, schedulers: list[str], registry_args: list[str], seed: bool = False,
               extra: list[str] | None = None, host: str = "127.0.0.1", wrap: list[str] | None = None,
               env: dict[str, str] | None = None) -> Damselfly:
    node = Damselfly(workdir, ["--scheduler", ",".join(schedulers), *registry_args, *(["--seed"] if seed else []),
                               *(extra or [])], command="daemon", host=host, wrap=wrap or [], env=env or {})
    given = extra[extra.index("--host-id") + 1] if extra and "--host-id" in extra else None
    name = given or f"{'seed' if seed else 'peer'}-{node.upload_port}"
    if any(url.startswith("https:") for url in schedulers):  # a TLS cluster: every member holds a certificate
        node.tls_name = name  # in its name: the host id
    elif given is None:
        node.args += ["--host-id", name]
    return node.start()
