"""Damselfly run as a real subprocess, the way a user starts it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


from testkit.processes import metric, stop_process, wait_healthy
from testkit.tls import tls_dir
from testkit.wait import free_port


@dataclass
class Damselfly:
    data_dir: Path
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    command: str = "run"  # or "daemon" with --scheduler in args
    host: str = "127.0.0.1"  # the address it listens on and is reached at
    wrap: list[str] = field(default_factory=list)  # e.g. ip netns exec NS
    upload_port: int = field(default_factory=free_port)
    scheduler_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment
    tls_name: str | None = None  # with a name: --tls-dir with a certificate of this run's CA for it
    # `run` embeds a manager on 127.0.0.1:8080 by default. Tests of the mirror and of P2P do
    # not need it (it costs a second of CPU at each start, and every `run` of the suite would
    # want that one port); tests of the manager pass a free address.
    manager_listen: str = "off"

    @property
    def _scheme(self) -> str:
        return "https" if self.tls_name else "http"

    @property
    def upload_url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.upload_port}"

    @property
    def scheduler_url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.scheduler_port}"

    def _tls_args(self) -> list[str]:
        if self.tls_name is None:
            return []
        if self.command == "run":
            roles: tuple[str, ...] = ("seed", "scheduler")
        else:
            roles = ("seed",) if "--seed" in self.args else ("peer",)
        return ["--tls-dir", str(tls_dir(self.tls_name, *roles))]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "Damselfly":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"damselfly-{self.port}.log"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "damselfly", self.command, "--listen", f"{self.host}:{self.port}",
             "--data-dir", str(self.data_dir), "--upload-listen", f"{self.host}:{self.upload_port}", *self.args,
             *self._tls_args(),
             *(["--scheduler-listen", f"{self.host}:{self.scheduler_port}", "--manager-listen", self.manager_listen]
               if self.command == "run" else [])],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        wait_healthy(self.process, self.url, f"damselfly on port {self.port}", self.log)
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def metric(self, name: str, labels: str = "") -> float:
        return metric(self.url, name, labels)
