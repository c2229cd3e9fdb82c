"""The registry client's blocking face, for the nydus commands and the manager: pull
manifests and blobs, push images.

Requests can go through a Damselfly mirror: the mirror becomes the base URL and the real
registry travels in the ``ns`` query parameter, as containerd sends it. Bearer tokens are
fetched when a registry challenges, as Docker Hub does: anonymous ones, or with the
caller's Basic credentials when it has some (which also answer an htpasswd registry's
Basic challenge). What is sent and accepted is registry/rules.py's, as for the mirror's
async face; the connections are lib/blockinghttp's session (redirects, proxies, keep-alive).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, NoReturn
from urllib.parse import urljoin

from damselfly import __version__
from damselfly.lib.blockinghttp import Body, Response, Session
from damselfly.core.oci import Digest, is_digest_reference, registry_base_url
from damselfly.registry.rules import (BearerChallenge, ChallengeInvalid, answers_blob, basic_authorization,
                                      blob_answer_problem, blob_url, manifest_url, offers_basic, parse_bearer_challenge,
                                      range_header, realm_problem, token_in_answer, token_request_url, uploads_url,
                                      with_query)

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

# What a request that got no answer raises.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)


class RegistryError(RuntimeError):
    """A registry answer the command cannot go on from; the message is meant for the user."""


class RegistryRefused(RegistryError):
    """The registry, or its token service, answered 401 or 403: it refused the credentials
    sent, or their absence."""


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
    """One registry, reached directly, at ``upstream`` (a URL its name is mapped to), or
    through a mirror (``mirror`` base URL plus ``ns``).

    ``credentials`` (user, password) and ``headers`` (sent with every request to the
    registry, not to its token service) are the caller's; an ``Authorization`` among the
    headers is sent until the registry asks for something else, and a Basic one serves as
    the credentials when no user and password are given."""

    def __init__(self, registry: str, plain_http: bool = False, mirror: str | None = None,
                 timeout: float = 60.0, upstream: str | None = None, credentials: tuple[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.registry = registry
        self.base_url = (mirror or upstream or registry_base_url(registry, plain_http)).rstrip("/")
        self.params = {"ns": registry} if mirror else {}
        self.http = Session(connect_timeout=min(10.0, timeout), read_timeout=timeout,
                            headers={"User-Agent": f"damselfly/{__version__}"})
        self.tokens: dict[str, str] = {}  # by scope
        self.headers = {name: value for name, value in (headers or {}).items() if name.lower() != "authorization"}
        given = next((value for name, value in (headers or {}).items() if name.lower() == "authorization"), None)
        self.given_authorization = given
        self.basic = (basic_authorization(*credentials) if credentials
                      else given if given and given.lower().startswith("basic ") else None)
        self.basic_asked = False  # the registry answered a Basic challenge: send self.basic from now on

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, url: str, scope: str, headers: dict[str, str] | None = None,
              params: dict[str, str] | None = None, body: Body = None) -> Response:
        """One request with the token kept for ``scope``, sent once more with a new one if the
        registry answers with a Bearer challenge, or with the Basic credentials if it asks for
        them (once); the answer of that second try is the answer."""
        url = with_query(url, {**self.params, **(params or {})})
        response = self._request(method, url, self._authorized(headers or {}, scope), body)
        challenge = self._bearer_challenge(response)
        if challenge is not None:
            response.discard()
            if (problem := realm_problem(url, challenge.realm)) is not None:
                raise RegistryError(problem)
            self.tokens[scope] = self._token(token_request_url(challenge, scope))
        elif (response.status_code == 401 and self.basic and not self.basic_asked
              and offers_basic(response.headers.get("WWW-Authenticate", ""))):
            response.discard()
            self.basic_asked = True
        else:
            return response
        return self._request(method, url, self._authorized(headers or {}, scope), body)

    def authorization(self, scope: str) -> str | None:
        """The ``Authorization`` this client sends for ``scope``: its token for it, else the
        Basic credentials once the registry asked for them, else the one the caller gave."""
        token = self.tokens.get(scope)
        if token:
            return f"Bearer {token}"
        return self.basic if self.basic_asked else self.given_authorization

    def _authorized(self, headers: dict[str, str], scope: str) -> dict[str, str]:
        authorization = self.authorization(scope)
        return {**self.headers, **headers, **({"Authorization": authorization} if authorization else {})}

    def _request(self, method: str, url: str, headers: dict[str, str], body: Body) -> Response:
        try:
            return self.http.request(method, url, headers, body)
        except TRANSPORT_ERRORS as error:
            raise RegistryError(f"{method} {url}: {error.__class__.__name__}: {error}") from None

    def _bearer_challenge(self, response: Response) -> BearerChallenge | None:
        """The Bearer challenge of a 401 answer, if it is one."""
        if response.status_code != 401:
            return None
        try:
            return parse_bearer_challenge(response.headers.get("WWW-Authenticate", ""))
        except ChallengeInvalid:
            response.close()
            raise RegistryError(f"{self.registry} asked for a token without naming a realm") from None

    def _token(self, url: str) -> str:
        """A token from the token service at ``url``, for the Basic credentials if there are
        some, else anonymous."""
        try:
            answer = self.http.request("GET", url, {"Authorization": self.basic} if self.basic else {})
            if answer.status_code != 200:
                answer.close()
                refusal = RegistryRefused if answer.status_code in (401, 403) else RegistryError
                raise refusal(f"token service {url} answered {answer.status_code}")
            return token_in_answer(answer.json())
        except (*TRANSPORT_ERRORS, ValueError) as error:
            raise RegistryError(f"token service {url}: {error}") from None

    @staticmethod
    def _check(response: Response, what: str, ok: tuple[int, ...] = (200,)) -> Response:
        if response.status_code not in ok:
            _refuse(response, what)
        return response

    # --- pulling -----------------------------------------------------------------------------------------------

    def manifest_bytes(self, repository: str, reference: str) -> tuple[bytes, str, str | None]:
        """A manifest or an index as the registry sent it: its bytes (at most
        MAX_MANIFEST_BYTES), its Content-Type, and the Docker-Content-Digest it claimed."""
        accept = ", ".join(MANIFEST_TYPES + INDEX_TYPES)
        url = manifest_url(self.base_url, repository, reference)
        what = f"manifest {repository}{'@' if is_digest_reference(reference) else ':'}{reference}"
        response = self._check(self._send("GET", url, pull_scope(repository), headers={"Accept": accept}), what)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        claimed = response.headers.get("Docker-Content-Digest")
        return self._read(response, MAX_MANIFEST_BYTES, what), media_type, claimed

    def manifest(self, repository: str, reference: str) -> tuple[dict[str, Any], bytes, str]:
        """The image manifest (an index resolved to this machine's platform), its bytes and media type."""
        body, media_type, _ = self.manifest_bytes(repository, reference)
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
        """The blob, or its bytes ``byte_range`` (first, last) checked by the same rule as the
        mirror's range requests; a whole blob needs no Content-Length here (its digest is
        checked as it streams)."""
        span = (byte_range[0], byte_range[1] - byte_range[0] + 1) if byte_range else None
        what = f"blob {digest[:19]} of {repository}"
        response = self._send("GET", blob_url(self.base_url, repository, digest), pull_scope(repository),
                              headers={"Range": range_header(span)} if span else {})
        try:
            if not answers_blob(response.status_code, span):
                _refuse(response, what)
            if span is not None:
                problem = blob_answer_problem(response.status_code, response.headers.get("Content-Range"),
                                              response.raw.length, span)
                if problem:
                    raise RegistryError(f"{what}: the registry {problem}")
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
        with self.open_blob(repository, digest) as response:
            data = self._read(response, limit, f"blob {digest[:19]} of {repository}")
        hasher = expected.hasher()
        hasher.update(data)
        if hasher.hexdigest() != expected.hex:
            raise RegistryError(f"blob {digest[:19]} of {repository} does not match its digest")
        return data

    def blob_length(self, repository: str, digest: str) -> int:
        """A blob's length, as the registry answers a HEAD for it."""
        what = f"blob {digest[:19]} of {repository}"
        with self._send("HEAD", blob_url(self.base_url, repository, digest), pull_scope(repository)) as response:
            if response.status_code != 200:
                _refuse(response, what)
            length = response.headers.get("Content-Length", "")
            claimed = response.headers.get("Docker-Content-Digest")
        if not (length.isascii() and length.isdigit()):
            raise RegistryError(f"{what}: the registry sent no Content-Length")
        if claimed is not None and claimed != digest:
            raise RegistryError(f"{what}: the registry says it is {claimed}")
        return int(length)

    # --- pushing -----------------------------------------------------------------------------------------------

    def has_blob(self, repository: str, digest: str) -> bool:
        with self._send("HEAD", blob_url(self.base_url, repository, digest),
                        f"repository:{repository}:pull,push") as response:
            return response.status_code == 200

    def push_blob(self, repository: str, digest: str, source: Path | bytes) -> None:
        """Monolithic upload (POST, then PUT with the digest), skipped when the registry has the blob."""
        if self.has_blob(repository, digest):
            return
        scope = f"repository:{repository}:pull,push"
        start = self._check(self._send("POST", uploads_url(self.base_url, repository), scope),
                            f"starting upload to {repository}", (202,))
        start.read()
        location = urljoin(self.base_url + "/", start.headers.get("Location", ""))
        body: Body = source if isinstance(source, bytes) else lambda: _file_chunks(source)
        length = len(source) if isinstance(source, bytes) else source.stat().st_size
        self._check(self._send("PUT", location, scope, params={"digest": digest}, body=body,
                               headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)}),
                    f"uploading {digest[:19]} to {repository}", (201,)).read()

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        self._check(self._send("PUT", manifest_url(self.base_url, repository, reference),
                               f"repository:{repository}:pull,push", body=body,
                               headers={"Content-Type": media_type}),
                    f"pushing manifest {repository}:{reference}", (201,)).read()
        return "sha256:" + hashlib.sha256(body).hexdigest()


def pull_scope(repository: str) -> str:
    """The token scope of reading ``repository``'s manifests and blobs."""
    return f"repository:{repository}:pull"


def _refuse(response: Response, what: str) -> NoReturn:
    """Raise the registry's refusal as a one-line RegistryError (RegistryRefused for 401 and
    403), with the start of its body."""
    try:
        detail = response.raw.read(200)  # an error body, not a blob: read its start only
    except TRANSPORT_ERRORS:
        detail = b""
    response.close()
    refusal = RegistryRefused if response.status_code in (401, 403) else RegistryError
    raise refusal(f"{what}: HTTP {response.status_code} {' '.join(detail.decode('utf-8', 'replace').split())}")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            yield chunk
