"""A cluster on loopback: a scheduler, seed peers and peers, each a separate process."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.daemon import Damselfly
from tests.support.processes import metric, stop_process
from tests.support.wait import free_port, wait_until


@dataclass
class SchedulerProcess:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    host: str = "127.0.0.1"
    wrap: list[str] = field(default_factory=list)  # e.g. ip netns exec NS

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "SchedulerProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"scheduler-{self.port}.log", "ab")
        self.process = subprocess.Popen([*self.wrap, sys.executable, "-m", "damselfly", "scheduler", "--listen",
                                         f"{self.host}:{self.port}"], stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: httpx.get(f"{self.url}/healthy", timeout=1).status_code == 200, 20, "the scheduler")
        return self

    def stop(self, kill: bool = False) -> None:
        stop_process(self.process, kill)

    def metric(self, name: str, labels: str = "") -> float:
        return metric(self.url, name, labels)


def start_peer(workdir: Path, schedulers: list[str], registry_args: list[str], seed: bool = False,
               extra: list[str] | None = None, host: str = "127.0.0.1", wrap: list[str] | None = None,
               env: dict[str, str] | None = None) -> Damselfly:
    node = Damselfly(workdir, ["--scheduler", ",".join(schedulers), *registry_args, *(["--seed"] if seed else []),
                               *(extra or [])], command="daemon", host=host, wrap=wrap or [], env=env or {})
    node.args += ["--host-id", f"{'seed' if seed else 'peer'}-{node.upload_port}"]
    return node.start()
