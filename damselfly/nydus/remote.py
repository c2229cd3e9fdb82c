"""A small synchronous registry client for the nydus commands: pull manifests and blobs, push images.

Requests can go through a Damselfly mirror: the mirror becomes the base URL and the real
registry travels in the ``ns`` query parameter, as containerd sends it. Anonymous Bearer
tokens are fetched when a registry challenges, as Docker Hub does.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import platform
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlencode, urljoin

from damselfly import __version__
from damselfly.lib.blockinghttp import Body, Response, Session
from damselfly.lib.oci import Digest, OCIError, validate_repository
from damselfly.proxy.upstream import DOCKER_HUB, normalize_upstream

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
_CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 4 << 20  # what the reference registry (distribution) accepts
MAX_SMALL_BLOB_BYTES = 16 << 20  # a blob read whole into memory, such as an image config


class RegistryError(RuntimeError):
    """A registry answer the command cannot go on from; the message is meant for the user."""


@dataclass(frozen=True)
class ImageRef:
    """``[registry/]repository[:tag|@digest]``; a name without a registry host means Docker Hub."""

    registry: str
    repository: str
    reference: str

    @classmethod
    def parse(cls, text: str) -> "ImageRef":
        name, reference = text, "latest"
        try:
            if "@" in name:
                name, reference = name.split("@", 1)
                Digest.parse(reference)
            else:
                match = re.match(r"^(.*?)(?::([\w][\w.-]{0,127}))?$", name)
                if match and match.group(2):
                    name, reference = match.group(1), match.group(2)
        except OCIError as error:
            raise ValueError(f"invalid image reference {text!r}: {error.message}") from None
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, rest
        else:
            registry, repository = DOCKER_HUB, name if rest else f"library/{name}"
        try:
            validate_repository(repository)
        except OCIError as error:
            raise ValueError(f"invalid image reference {text!r}: {error.message}") from None
        return cls(registry, repository, reference)

    def __str__(self) -> str:
        joiner = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.registry}/{self.repository}{joiner}{self.reference}"


def registry_base_url(registry: str, plain_http: bool) -> str:
    """The mirror's own rule (docker.io means registry-1.docker.io), plus plain HTTP on request."""
    return normalize_upstream(f"http://{registry}" if plain_http and registry != DOCKER_HUB else registry)


def _with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` added to whatever query it has."""
    query = urlencode(params)
    return url + ("&" if "?" in url else "?") + query if query else url


# What a request that got no answer raises.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


def read_body(parts: Iterable[bytes], limit: int, what: str) -> bytes:
    """The parts joined, refused as soon as they run past ``limit`` bytes: a body is never
    buffered beyond what the caller can use, whatever the registry sends."""
    body: list[bytes] = []
    length = 0
    for part in parts:
        length += len(part)
        if length > limit:
            raise RegistryError(f"{what}: the registry sent more than the {limit} bytes expected")
        body.append(part)
    return b"".join(body)


class RegistryClient:
    """One registry, reached directly or through a mirror (``mirror`` base URL plus ``ns``)."""

    def __init__(self, registry: str, plain_http: bool = False, mirror: str | None = None,
                 timeout: float = 60.0) -> None:
        self.registry = registry
        self.base_url = (mirror or registry_base_url(registry, plain_http)).rstrip("/")
        self.params = {"ns": registry} if mirror else {}
        self.http = Session(connect_timeout=10.0, read_timeout=timeout,
                            headers={"User-Agent": f"damselfly/{__version__}"})
        self.tokens: dict[str, str] = {}

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, url: str, scope: str, headers: dict[str, str] | None = None,
              params: dict[str, str] | None = None, body: Body = None) -> Response:
        url = _with_query(url, {**self.params, **(params or {})})
        headers = dict(headers or {})
        for attempt in range(2):
            if scope in self.tokens:
                headers["Authorization"] = f"Bearer {self.tokens[scope]}"
            try:
                response = self.http.request(method, url, headers, body)
            except TRANSPORT_ERRORS as error:
                raise RegistryError(f"{method} {url}: {error.__class__.__name__}: {error}") from None
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status_code == 401 and attempt == 0 and challenge.lower().startswith("bearer "):
                response.discard()
                self.tokens[scope] = self._token(challenge, scope)
                continue
            return response
        return response

    def _token(self, challenge: str, scope: str) -> str:
        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        if "realm" not in fields:
            raise RegistryError(f"{self.registry} asked for a token without naming a realm")
        realm = fields["realm"]
        url = _with_query(realm, {"service": fields.get("service", ""), "scope": scope})
        try:
            answer = self.http.request("GET", url)
            if answer.status_code != 200:
                answer.close()
                raise RegistryError(f"token service {realm} answered {answer.status_code}")
            body = answer.json()
        except (*TRANSPORT_ERRORS, ValueError) as error:
            raise RegistryError(f"token service {realm}: {error}") from None
        if not isinstance(body, dict):
            raise RegistryError(f"token service {realm} answered no JSON object")
        return body.get("token") or body.get("access_token") or ""

    @staticmethod
    def _check(response: Response, what: str, ok: tuple[int, ...] = (200,)) -> Response:
        if response.status_code not in ok:
            try:
                detail = response.raw.read(200)  # an error body, not a blob: read its start only
            except TRANSPORT_ERRORS:
                detail = b""
            response.close()
            raise RegistryError(f"{what}: HTTP {response.status_code} "
                                f"{' '.join(detail[:200].decode('utf-8', 'replace').split())}")
        return response

    # --- pulling -----------------------------------------------------------------------------------------------

    def manifest(self, repository: str, reference: str) -> tuple[dict, bytes, str]:
        """The image manifest (an index resolved to this machine's platform), its bytes and media type."""
        accept = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
        url = f"{self.base_url}/v2/{repository}/manifests/{reference}"
        response = self._check(self._send("GET", url, f"repository:{repository}:pull", headers={"Accept": accept}),
                               f"manifest {repository}:{reference}")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        body = self._read(response, MAX_MANIFEST_BYTES, f"manifest {repository}:{reference}")
        try:
            document = json.loads(body)
        except ValueError:
            raise RegistryError(f"manifest {repository}:{reference} is not JSON") from None
        media_type = document.get("mediaType", media_type)
        if media_type in INDEX_TYPES or "manifests" in document:
            arch = _ARCHITECTURES.get(platform.machine(), platform.machine())
            for entry in document.get("manifests", []):
                plat = entry.get("platform", {})
                if plat.get("os", "linux") == "linux" and plat.get("architecture", arch) == arch:
                    return self.manifest(repository, entry["digest"])
            raise RegistryError(f"{repository}:{reference} has no manifest for linux/{arch}")
        return document, body, media_type

    @contextmanager
    def open_blob(self, repository: str, digest: str, byte_range: tuple[int, int] | None = None
                  ) -> Iterator[Response]:
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        response = self._send("GET", f"{self.base_url}/v2/{repository}/blobs/{digest}",
                              f"repository:{repository}:pull", headers=headers)
        try:
            self._check(response, f"blob {digest[:19]} of {repository}", (206,) if byte_range else (200,))
            yield response
        finally:
            response.close()

    def fetch_blob(self, repository: str, digest: str, path: Path) -> Path:
        """Download a blob to ``path``, checking its digest; nothing is left behind on a mismatch."""
        expected = Digest.parse(digest)
        hasher = expected.hasher()
        try:
            with self.open_blob(repository, digest) as response, open(path, "wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
        except (*TRANSPORT_ERRORS, RegistryError) as error:
            path.unlink(missing_ok=True)
            raise RegistryError(f"downloading {digest[:19]}: {error}") from None
        if hasher.hexdigest() != expected.hex:
            path.unlink(missing_ok=True)
            raise RegistryError(f"blob {digest[:19]} of {repository} does not match its digest")
        return path

    @staticmethod
    def _read(response: Response, limit: int, what: str) -> bytes:
        """A whole body of at most ``limit`` bytes; a longer one is refused while it arrives (and
        its connection closed, the rest unread)."""
        try:
            with response:
                return read_body(response.iter_bytes(), limit, what)
        except TRANSPORT_ERRORS as error:
            raise RegistryError(f"{what}: {error}") from None

    def blob_bytes(self, repository: str, digest: str, limit: int = MAX_SMALL_BLOB_BYTES) -> bytes:
        """A blob read into memory, at most ``limit`` bytes of it, checked against its digest."""
        expected = Digest.parse(digest)
        try:
            with self.open_blob(repository, digest) as response:
                data = self._read(response, limit, f"blob {digest[:19]} of {repository}")
        except TRANSPORT_ERRORS as error:
            raise RegistryError(f"reading blob {digest[:19]} of {repository}: {error}") from None
        hasher = expected.hasher()
        hasher.update(data)
        if hasher.hexdigest() != expected.hex:
            raise RegistryError(f"blob {digest[:19]} of {repository} does not match its digest")
        return data

    # --- pushing -----------------------------------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        with self._send("HEAD", f"{self.base_url}/v2/{repository}/blobs/{digest}",
                        f"repository:{repository}:pull,push") as response:
            return response.status_code == 200

    def push_blob(self, repository: str, digest: str, source: Path | bytes) -> None:
        """Monolithic upload (POST, then PUT with the digest), skipped when the registry has the blob."""
        if self.has_blob(repository, digest):
            return
        scope = f"repository:{repository}:pull,push"
        start = self._check(self._send("POST", f"{self.base_url}/v2/{repository}/blobs/uploads/", scope),
                            f"starting upload to {repository}", (202,))
        start.read()
        location = urljoin(self.base_url + "/", start.headers.get("Location", ""))
        body: Body = source if isinstance(source, bytes) else lambda: _file_chunks(source)
        length = len(source) if isinstance(source, bytes) else source.stat().st_size
        self._check(self._send("PUT", location, scope, params={"digest": digest}, body=body,
                               headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)}),
                    f"uploading {digest[:19]} to {repository}", (201,)).read()

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        self._check(self._send("PUT", f"{self.base_url}/v2/{repository}/manifests/{reference}",
                               f"repository:{repository}:pull,push", body=body,
                               headers={"Content-Type": media_type}),
                    f"pushing manifest {repository}:{reference}", (201,)).read()
        return "sha256:" + hashlib.sha256(body).hexdigest()


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            yield chunk
