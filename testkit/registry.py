"""A real docker-registry (Debian package) on loopback, and an OCI client to push to it."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from testkit.processes import stop_process
from testkit.wait import free_port, wait_until

ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')


@dataclass
class AccessEntry:
    method: str
    path: str
    status: int
    bytes: int


@dataclass
class Registry:
    """docker-registry serving one storage directory; its access log is parsed for assertions."""

    workdir: Path
    auth: dict | None = None  # the ``auth:`` section of its config
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    address: str = "127.0.0.1"
    wrap: list[str] = field(default_factory=list)  # e.g. ip netns exec NS
    extra_config: dict = field(default_factory=dict)  # e.g. {"proxy": {"remoteurl": ...}} for pull-through

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def start(self) -> "Registry":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.workdir / "storage")}, "delete": {"enabled": True}},
            "http": {"addr": self.host},
        }
        if self.auth:
            config["auth"] = self.auth
        config.update(self.extra_config)
        (self.workdir / "config.yml").write_text(json.dumps(config))
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([*self.wrap, "docker-registry", "serve", str(self.workdir / "config.yml")],
                                        stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self._answers(), 20, f"docker-registry on {self.host}")
        return self

    def _answers(self) -> bool:
        if self.process and self.process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}")
        return httpx.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401)

    def stop(self) -> None:
        stop_process(self.process)

    def access_log(self) -> list[AccessEntry]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if match := ACCESS_LINE.search(line):
                size = match["bytes"]
                entries.append(AccessEntry(match["method"], match["path"], int(match["status"]),
                                           0 if size == "-" else int(size)))
        return entries

    def blob_gets(self, digest: str, repository: str = "") -> list[AccessEntry]:
        """GETs of a blob, of one repository if given (tests share a registry and busybox layers)."""
        suffix = f"/{repository}/blobs/{digest}" if repository else f"/blobs/{digest}"
        return [e for e in self.access_log() if e.method == "GET" and e.path.split("?")[0].endswith(suffix)]


def htpasswd_auth(workdir: Path, users: dict[str, str]) -> dict:
    """The ``auth:`` section of a registry that wants Basic credentials of ``users`` (name ->
    password), with its htpasswd file (bcrypt, the only hash docker-registry reads) in ``workdir``."""
    import bcrypt  # a test dependency only: the benchmarks import this module too

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "htpasswd"
    path.write_text("".join(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n"
                            for user, password in users.items()))
    return {"htpasswd": {"realm": "damselfly-test", "path": str(path)}}


class RegistryClient:
    """Pushes blobs and manifests, doing the Bearer token dance when the registry asks, or
    sending Basic credentials when it asks for them."""

    def __init__(self, base_url: str, credentials: tuple[str, str] | None = None) -> None:
        self.base_url = base_url
        self.credentials = credentials
        self.http = httpx.Client(timeout=120)
        self._authorizations: dict[str, str] = {}  # by scope

    def _request(self, method: str, url: str, scope: str, **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if scope in self._authorizations:
            headers["Authorization"] = self._authorizations[scope]
        response = self.http.request(method, url, headers=headers, **kwargs)
        if response.status_code == 401 and "content" not in kwargs:
            challenge = response.headers["WWW-Authenticate"]
            if challenge.startswith("Basic") and self.credentials:
                self._authorizations[scope] = basic_auth(*self.credentials)
            else:
                self._authorizations[scope] = f"Bearer {self._fetch_token(challenge, scope)}"
            headers["Authorization"] = self._authorizations[scope]
            response = self.http.request(method, url, headers=headers, **kwargs)
        return response

    def _fetch_token(self, challenge: str, scope: str) -> str:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        auth = None
        if self.credentials:
            auth = httpx.BasicAuth(*self.credentials)
        response = self.http.get(params["realm"], params={"service": params["service"], "scope": scope}, auth=auth)
        response.raise_for_status()
        return response.json()["token"]

    def push_blob(self, name: str, data: bytes | Path) -> str:
        scope = f"repository:{name}:pull,push"
        if isinstance(data, Path):
            digest = "sha256:" + _file_sha256(data)
            size = data.stat().st_size
        else:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            size = len(data)
        head = self._request("HEAD", f"{self.base_url}/v2/{name}/blobs/{digest}", scope)
        if head.status_code == 200:
            return digest
        start = self._request("POST", f"{self.base_url}/v2/{name}/blobs/uploads/", scope)
        assert start.status_code == 202, start.text
        location = httpx.URL(self.base_url).join(start.headers["Location"])
        body = _file_chunks(data) if isinstance(data, Path) else data
        put = self._request("PUT", str(location.copy_merge_params({"digest": digest})), scope, content=body,
                            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        assert put.status_code == 201, put.text
        return digest

    def push_manifest(self, name: str, reference: str, manifest: bytes, media_type: str) -> str:
        response = self._request("PUT", f"{self.base_url}/v2/{name}/manifests/{reference}", f"repository:{name}:pull,push",
                                 content=manifest, headers={"Content-Type": media_type})
        assert response.status_code == 201, response.text
        return response.headers["Docker-Content-Digest"]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
