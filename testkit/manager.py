"""`damselfly manager` run as a real subprocess, and an httpx client that signs in to it."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from testkit.processes import stop_process, wait_healthy
from testkit.wait import free_port

ROOT_PASSWORD = "root-password-for-tests"


@dataclass
class Manager:
    data_dir: Path
    database: str | None = None  # None: SQLite in data_dir
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    listen_host: str = "127.0.0.1"  # 0.0.0.0 to be reached from another address too
    root_password: str | None = ROOT_PASSWORD
    tls_dir: Path | None = None  # --tls-dir: HTTPS, and components show certificates
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.listen_host in ("0.0.0.0", "::") else self.listen_host
        return f"{'https' if self.tls_dir else 'http'}://{host}:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What a person's client (no certificate) trusts the manager with: the cluster CA."""
        if self.tls_dir is None:
            return True
        return ssl.create_default_context(cafile=str(self.tls_dir / "ca.pem"))

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def start(self) -> "Manager":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / f"manager-{self.port}.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith("DAMSELFLY_")}
        if self.root_password is not None:
            env["DAMSELFLY_ROOT_PASSWORD"] = self.root_password
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "damselfly", "manager", "--listen", f"{self.listen_host}:{self.port}",
                 "--data-dir", str(self.data_dir), *(["--database", self.database] if self.database else []),
                 *(["--tls-dir", str(self.tls_dir)] if self.tls_dir else []), *self.args], stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_healthy(self.process, self.url, f"manager on port {self.port}", self.log)
        return self

    def stop(self, kill: bool = False) -> None:
        stop_process(self.process, kill=kill)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.api, headers=headers, timeout=30, verify=self.verify)

    def sign_in(self, name: str = "root", password: str = ROOT_PASSWORD) -> str:
        answer = httpx.post(f"{self.api}/users/signin", json={"name": name, "password": password}, timeout=30,
                            verify=self.verify)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["token"])

    def root(self) -> httpx.Client:
        return self.client(self.sign_in())

    def guest(self, name: str, password: str = "guest-password-1") -> httpx.Client:
        """A guest (created by root if missing), signed in."""
        with self.root() as root:
            created = root.post("/users", json={"name": name, "password": password, "role": "guest"})
            assert created.status_code in (201, 409), created.text
        return self.client(self.sign_in(name, password))

    def register(self, kind: str, host_id: str, url: str, **fields: Any) -> dict[str, Any]:
        answer = httpx.post(f"{self.api}/components", json={"kind": kind, "host_id": host_id, "url": url, **fields},
                            timeout=30)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())
