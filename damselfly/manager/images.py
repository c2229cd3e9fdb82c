"""What a preheat places: the manager resolves an image (or a file) into exactly what a pull
needs, the manifests with their bytes, the tag's resolution, and the config and layer blobs.

The manager asks the registry itself, so that schedulers and seeds are handed digests they
check bytes against, not references a registry could answer differently later. Every
manifest is checked against its digest here, and an index is narrowed to the platforms
asked for (by default every one it lists, never the manager's own). Nydus images need
nothing of their own: their bootstrap and data blobs are layers, and an index's nydus
entry for a platform is kept beside the OCI one.

Which URL a registry name is reached at follows the mirror's rule (the manager's own
``--registry`` map, else ``https://NAME``); plain HTTP goes only to a mapped name or to
loopback, so that a caller cannot make the manager talk cleartext to a host of its choosing.
Credentials serve this resolution and the job's seeds only: reprs hide them, and error
messages never carry them.
"""

from __future__ import annotations

import hashlib
import json
import platform as host
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from damselfly.core.jobs import MAX_JOB_BLOBS, MAX_JOB_MANIFESTS, Blob, Manifest
from damselfly.core.oci import (DOCKER_HUB, Digest, ImageRef, OCIError, is_digest_reference, normalize_upstream,
                                registry_name, validate_reference, validate_repository)
from damselfly.lib.tls import is_loopback
from damselfly.manager.errors import ApiError
from damselfly.registry.blocking import (INDEX_TYPES, MANIFEST_TYPES, TRANSPORT_ERRORS, RegistryClient, RegistryError,
                                         RegistryRefused, pull_scope)
from damselfly.registry.rules import basic_authorization

OCI_MANIFEST, OCI_INDEX = MANIFEST_TYPES[0], INDEX_TYPES[0]
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")
DOCKER_HUB_HOSTS = ("index.docker.io", "registry-1.docker.io")  # Docker Hub's API, named docker.io by peers
FILE_URL = "a file preheat takes a registry blob URL http(s)://REGISTRY/v2/REPO/blobs/sha256:…"
_API_PATH = re.compile(r"/v2/(?P<repository>.+)/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)")
_PLATFORM_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


@dataclass(frozen=True, repr=False)
class Credentials:
    """A job's credentials for its registry; the repr shows no password or header value."""

    username: str = ""
    password: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # extra request headers, e.g. Authorization

    @property
    def given(self) -> bool:
        """Whether there are any: a user or password, or any header (a header may carry a
        secret under any name: what it opens is private)."""
        return bool(self.username or self.password or self.headers)

    def secrets(self) -> list[str]:
        """What no message may show: the password, every header value, the Basic form of both."""
        found = [self.password, *self.headers.values()]
        if self.username or self.password:
            basic = basic_authorization(self.username, self.password)
            found += [basic, basic.removeprefix("Basic ")]
        return [secret for secret in found if secret]

    def __repr__(self) -> str:
        headers = ", ".join(f"{name!r}: '***'" for name in self.headers)
        return (f"Credentials(username={self.username!r}, password={'***' if self.password else ''!r}, "
                f"headers={{{headers}}})")


@dataclass(frozen=True)
class ResolvedImage:
    """What a preheat places, as the registry answered the manager just now."""

    registry: str  # the registry's name (host[:port]) as peers name it, e.g. "127.0.0.1:5000" or "docker.io"
    repository: str
    tags: dict[str, str]  # tag -> the digest it resolved to ({} for a digest reference or a file)
    manifests: tuple[Manifest, ...]  # the top manifest or index first, then each chosen platform's manifest
    blobs: tuple[Blob, ...]  # config and layers of every chosen platform, each once, in order
    private: bool  # credentials were given
    # What the registry accepted for reading this repository ("Basic …", "Bearer …"); None
    # when anonymous. A secret: left out of the repr.
    authorization: str | None = field(repr=False)


@dataclass(frozen=True)
class Target:
    """Where to read: the registry's name as peers name it, the URL the manager reaches it
    at, a repository in it and a reference (a tag, or a digest of a manifest or blob)."""

    registry: str
    url: str
    repository: str
    reference: str


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]`` as a caller asks for it; without a variant, any variant matches."""

    os: str
    architecture: str
    variant: str = ""

    def matches(self, described: object) -> bool:
        """Whether an index entry's ``platform`` is this one."""
        return (isinstance(described, dict) and described.get("os") == self.os
                and described.get("architecture") == self.architecture
                and (not self.variant or described.get("variant") == self.variant))

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)


class BadAnswer(Exception):
    """The registry answered something no pull could use; the message says what, for a 502."""


# --- pure: what the caller asked for -----------------------------------------------------------------------------

def image_target(url: str, registries: Mapping[str, str], default_scheme: str = "https") -> Target:
    """An image as ``REGISTRY/REPO:TAG``, ``REGISTRY/REPO@DIGEST`` (over ``default_scheme``)
    or ``http(s)://REGISTRY/v2/REPO/manifests/REF``; ValueError, saying what is wrong."""
    if "://" in url:
        scheme, name, repository, kind, reference = _api_url(url)
        if kind != "manifests":
            raise ValueError("want REGISTRY/REPO:TAG, REGISTRY/REPO@DIGEST or http(s)://REGISTRY/v2/REPO/manifests/REF")
    else:
        ref = ImageRef.parse(url)
        scheme, name, repository, reference = default_scheme, _registry_name(ref.registry), ref.repository, ref.reference
    if is_digest_reference(reference) and not reference.startswith("sha256:"):
        raise ValueError("a manifest is named by its sha256 digest")
    return Target(name, registry_url(name, scheme, registries), repository, reference)


def blob_target(url: str, registries: Mapping[str, str]) -> Target:
    """A blob as ``http(s)://REGISTRY/v2/REPO/blobs/DIGEST``; ValueError, saying what is wrong."""
    if "://" not in url:
        raise ValueError("not a URL")
    scheme, name, repository, kind, reference = _api_url(url)
    if kind != "blobs" or not is_digest_reference(reference):
        raise ValueError("not a blob URL")
    return Target(name, registry_url(name, scheme, registries), repository, reference)


def _api_url(url: str) -> tuple[str, str, str, str, str]:
    """(scheme, registry name, repository, manifests or blobs, reference) of a registry API URL."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError("want an http or https URL")
        if "@" in parts.netloc:
            raise ValueError("a user or password belongs in username and password, not in the URL")
        if parts.query or parts.fragment:
            raise ValueError("the URL has a query or fragment")
        path = _API_PATH.fullmatch(parts.path)
        if path is None:
            raise ValueError("the path is not /v2/REPO/manifests/REF or /v2/REPO/blobs/DIGEST")
        name = _registry_name(parts.netloc)
        validate_repository(path["repository"])
        validate_reference(path["reference"])
    except OCIError as error:
        raise ValueError(error.message) from None
    return scheme, name, path["repository"], path["kind"], path["reference"]


def _registry_name(text: str) -> str:
    """``host[:port]`` as peers name the registry (Docker Hub's API hosts as docker.io)."""
    name = registry_name(text)
    return DOCKER_HUB if name in DOCKER_HUB_HOSTS else name


def registry_url(name: str, scheme: str, registries: Mapping[str, str]) -> str:
    """Where the manager reaches registry ``name``, asked for over ``scheme``: its URL in the
    manager's map, else over https (Docker Hub at its API host), else over plain HTTP on
    loopback only; ValueError for plain HTTP anywhere else."""
    if name in registries:
        return registries[name]
    if scheme == "https":
        return normalize_upstream(name)
    if not is_loopback(urlsplit(f"//{name}").hostname or ""):
        raise ValueError(f"plain HTTP only to a registry on this machine or in the manager's --registry map, "
                         f"not {name}")
    return f"http://{name}"


def parse_platform(text: str) -> Platform | None:
    """``all`` (None: every platform) or ``os/architecture[/variant]``; ValueError otherwise."""
    if text.strip().lower() == "all":
        return None
    parts = text.strip().lower().split("/")
    if not 2 <= len(parts) <= 3 or not all(_PLATFORM_PART.fullmatch(part) for part in parts):
        raise ValueError(f"{text[:40]!r} is not all or os/architecture[/variant], e.g. linux/amd64")
    return Platform(*parts)


def host_platform() -> Platform:
    """This machine's platform, as an index names it."""
    machine = host.machine().lower()
    return Platform("linux", _ARCHITECTURES.get(machine, machine))


# --- pure: what the registry answered ------------------------------------------------------------------------------

def manifest_digest(body: bytes, asked: str | None, claimed: str | None) -> str:
    """The sha256 digest of a manifest's bytes; BadAnswer when they do not hash to the digest
    ``asked`` for, or when the registry ``claimed`` another (Docker-Content-Digest)."""
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if asked is not None and digest != asked:
        raise BadAnswer(f"the manifest it sent for {asked} hashes to {digest}")
    if claimed is not None and claimed != digest:
        raise BadAnswer(f"it says the manifest is {claimed}, its bytes hash to {digest}")
    return digest


def read_document(body: bytes, content_type: str) -> tuple[dict[str, Any], str, Literal["index", "manifest"]]:
    """A manifest's or an index's JSON object, media type and kind; BadAnswer for anything
    else, schema 1 included (its digest is not the hash of its bytes)."""
    try:
        document = json.loads(body)
    except ValueError:
        raise BadAnswer("a manifest that is not JSON") from None
    if not isinstance(document, dict):
        raise BadAnswer("a manifest that is not a JSON object")
    media_type = document.get("mediaType") or content_type
    if document.get("schemaVersion") == 1 or media_type in SCHEMA1_TYPES:
        raise BadAnswer("a schema 1 manifest, whose digest is no hash of its bytes: push the image again")
    if media_type in INDEX_TYPES or (media_type not in MANIFEST_TYPES and "manifests" in document):
        return document, media_type if media_type in INDEX_TYPES else OCI_INDEX, "index"
    if media_type in MANIFEST_TYPES or "layers" in document:
        return document, media_type if media_type in MANIFEST_TYPES else OCI_MANIFEST, "manifest"
    raise BadAnswer(f"a manifest of type {str(media_type)[:80]!r}, neither an image manifest nor an index")


def choose_entries(index: dict[str, Any], wanted: Platform | None) -> list[dict[str, Any]]:
    """The entries of an index a pull of ``wanted`` (None: every platform) fetches: each
    platform's manifests (an OCI and a nydus one alike), never an attestation. BadAnswer
    for a malformed index; ValueError, naming the platforms it has, when none is ``wanted``."""
    entries = index.get("manifests")
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise BadAnswer("an index without a list of manifests")
    images = [entry for entry in entries if (entry.get("annotations") or {}).get("vnd.docker.reference.type")
              != "attestation-manifest"]
    chosen = [entry for entry in images if wanted is None or wanted.matches(entry.get("platform"))]
    if not images:
        raise BadAnswer("an index that lists no image manifest")
    if not chosen:
        names = dict.fromkeys(_platform_name(entry.get("platform")) for entry in images)
        raise ValueError(f"the index has no manifest for {wanted}, only for {', '.join(names)}")
    return chosen


def _platform_name(described: object) -> str:
    if not isinstance(described, dict):
        return "an unnamed platform"
    return "/".join(str(described.get(key) or "?") for key in ("os", "architecture", "variant")
                    if key != "variant" or described.get(key))


def descriptor_digest(entry: dict[str, Any]) -> str:
    """A descriptor's digest; BadAnswer if it names none."""
    digest = entry.get("digest")
    try:
        return str(Digest.parse(digest if isinstance(digest, str) else ""))
    except OCIError:
        raise BadAnswer("a descriptor without a valid digest") from None


def manifest_blobs(manifest: dict[str, Any]) -> list[Blob]:
    """The config and the layers (a nydus image's data blobs and bootstrap alike) of an
    image manifest, in order; BadAnswer for a descriptor without a digest or a size."""
    config, layers = manifest.get("config"), manifest.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise BadAnswer("an image manifest without a config or a list of layers")
    blobs = []
    for entry in [config, *layers]:
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadAnswer("a config or layer without a size")
        media_type = entry.get("mediaType")
        blobs.append(Blob(descriptor_digest(entry), size, media_type if isinstance(media_type, str) else ""))
    return blobs


def redact(message: str, credentials: Credentials, tokens: Iterable[str] = ()) -> str:
    """``message`` on one line, without any secret of ``credentials`` in it, nor any of the
    ``tokens`` they earned (a registry's error may echo what it was sent)."""
    for secret in sorted([*credentials.secrets(), *(t for t in tokens if t)], key=len, reverse=True):
        message = message.replace(secret, "***")
    return " ".join(message.split())


# --- resolving, with the registry -----------------------------------------------------------------------------------

def check_url(kind: str, url: str, registries: Mapping[str, str]) -> None:
    """ApiError 400 unless ``url`` is one a job of ``kind`` (image or file) can take: checked
    before the job is stored, logged or shown, so that nothing unusable, such as a password
    written into the URL, gets that far. The message never repeats the URL."""
    try:
        image_target(url, registries) if kind == "image" else blob_target(url, registries)
    except ValueError as error:
        raise ApiError(400, f"url: {' '.join(str(error).replace(url, 'the URL').split())}"
                            + ("" if kind == "image" else f" ({FILE_URL})")) from None


def resolve_image(url: str, platform: str, credentials: Credentials, registries: Mapping[str, str],
                  timeout: float = 15.0) -> ResolvedImage:
    """``url``'s manifests and blobs, for ``platform`` (``all`` or ``os/arch[/variant]``).
    Blocking: run it in a thread; ``timeout`` bounds each request. ApiError 400 for a bad
    URL, platform or plain-HTTP host, or a platform the index lacks; 502 naming the
    registry when it cannot be asked, refuses, or answers what no pull could use."""
    try:
        target = image_target(url, registries)
    except ValueError as error:
        raise ApiError(400, f"url: {redact(str(error), credentials)}") from None
    try:
        wanted = parse_platform(platform)
    except ValueError as error:
        raise ApiError(400, f"platform: {error}") from None
    return resolve_target(target, wanted, credentials, timeout)


def resolve_target(target: Target, wanted: Platform | None, credentials: Credentials, timeout: float
                   ) -> ResolvedImage:
    """resolve_image for a parsed ``target`` (the tasks API names images its own way)."""
    with _registry(target, credentials, timeout) as client:
        top, document, kind = _fetch(client, target, target.reference)
        manifests, images = {top.digest: top}, [document]
        if kind == "index":
            try:
                entries = choose_entries(document, wanted)
            except ValueError as error:
                raise ApiError(400, f"platform: {_named(target)}: {error}") from None
            if len(entries) >= MAX_JOB_MANIFESTS:
                raise BadAnswer(f"an index of {len(entries)} manifests, more than a job takes ({MAX_JOB_MANIFESTS - 1})")
            images = []
            for entry in entries:
                manifest, image, kind = _fetch(client, target, descriptor_digest(entry))
                if kind == "index":
                    raise BadAnswer(f"an index inside the index ({manifest.digest}), which the manager does not follow")
                if entry.get("size") != len(manifest.body):
                    raise BadAnswer(f"manifest {manifest.digest} is {len(manifest.body)} bytes, its index says "
                                    f"{entry.get('size')!r}")
                manifests[manifest.digest] = manifest
                images.append(image)
        blobs = {blob.digest: blob for image in images for blob in manifest_blobs(image)}
        if len(blobs) > MAX_JOB_BLOBS:
            raise BadAnswer(f"{len(blobs)} blobs, more than a job takes ({MAX_JOB_BLOBS})")
        return ResolvedImage(
            registry=target.registry, repository=target.repository,
            tags={} if is_digest_reference(target.reference) else {target.reference: top.digest},
            manifests=tuple(manifests.values()), blobs=tuple(blobs.values()), private=credentials.given,
            authorization=client.authorization(pull_scope(target.repository)) if credentials.given else None)


def resolve_file(url: str, digest: str, registries: Mapping[str, str], credentials: Credentials,
                 timeout: float = 15.0) -> ResolvedImage:
    """A file preheat: the registry blob at ``url``, which must be ``digest`` (task ids are
    digests), with its length as a HEAD answers it; no manifests. Blocking, errors as
    resolve_image's."""
    if not digest:
        raise ApiError(400, "digest: a file preheat needs the file's digest (sha256:…)")
    try:
        wanted = str(Digest.parse(digest))
    except OCIError as error:
        raise ApiError(400, f"digest: {error.message}") from None
    try:
        target = blob_target(url, registries)
    except ValueError as error:
        raise ApiError(400, f"url: {FILE_URL}: {redact(str(error), credentials)}") from None
    if target.reference != wanted:
        raise ApiError(400, f"url: the URL names blob {target.reference}, not the digest {wanted}")
    with _registry(target, credentials, timeout) as client:
        size = client.blob_length(target.repository, wanted)
        return ResolvedImage(target.registry, target.repository, {}, (), (Blob(wanted, size),), credentials.given,
                             client.authorization(pull_scope(target.repository)) if credentials.given else None)


def _named(target: Target) -> str:
    """``REPO:TAG`` or ``REPO@DIGEST``."""
    return f"{target.repository}{'@' if is_digest_reference(target.reference) else ':'}{target.reference}"


def _fetch(client: RegistryClient, target: Target, reference: str
           ) -> tuple[Manifest, dict[str, Any], Literal["index", "manifest"]]:
    """A manifest or index, checked against the digest asked for or claimed."""
    body, content_type, claimed = client.manifest_bytes(target.repository, reference)
    digest = manifest_digest(body, reference if is_digest_reference(reference) else None, claimed)
    document, media_type, kind = read_document(body, content_type)
    return Manifest(digest, media_type, body), document, kind


@contextmanager
def _registry(target: Target, credentials: Credentials, timeout: float) -> Iterator[RegistryClient]:
    """A client of ``target``'s registry with ``credentials``, closed after; what goes wrong
    with the registry becomes ApiError 502 naming it, without a secret."""
    client = RegistryClient(target.registry, upstream=target.url, timeout=timeout, headers=credentials.headers,
                            credentials=(credentials.username, credentials.password)
                            if credentials.username or credentials.password else None)
    try:
        yield client
    except RegistryRefused as error:
        refused = "the credentials" if credentials.given else "anonymous access"
        raise ApiError(502, f"registry {target.registry} refused {refused}: "
                            f"{redact(str(error), credentials, client.tokens.values())}") from None
    except (RegistryError, BadAnswer, *TRANSPORT_ERRORS) as error:
        raise ApiError(502, f"registry {target.registry}: "
                            f"{redact(str(error), credentials, client.tokens.values())}") from None
    finally:
        client.close()
