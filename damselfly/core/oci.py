"""OCI distribution vocabulary (pure): repository names, digests, registry names and image
references, where a blob lives, and the errors a registry or other blob source answers with.

The bottom of the dependency order: the registry client, the blob service, the mirror and
the nydus commands all speak it, so it imports nothing else from Damselfly."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass

# One path component of a repository name, as the distribution spec defines it.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
# Always fullmatch: "$" also matches before a final newline, so "busybox\n" would pass.
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_NAME_MAX = 255
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")

# Hex lengths of the algorithms hashlib can verify for us.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha512": 128}


class OCIError(Exception):
    """A client error with an OCI error code, turned into an HTTP answer by the proxy."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> bytes:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> bytes:
    """The JSON body registries send with an error: {"errors":[{"code","message"}]}."""
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


def validate_repository(name: str) -> str:
    """``name`` if it is a repository name the distribution spec allows; OCIError 400 otherwise."""
    if len(name) > _NAME_MAX or not _NAME_RE.fullmatch(name):
        raise OCIError(400, "NAME_INVALID", f"invalid repository name {name!r}")
    return name


@dataclass(frozen=True)
class Digest:
    """A validated content digest such as ``sha256:<64 lowercase hex>``."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> "Digest":
        algorithm, sep, hexpart = text.partition(":")
        expected = _DIGEST_HEX_LENGTH.get(algorithm)
        if (
            not sep
            or expected is None
            or len(hexpart) != expected
            or not all(c in "0123456789abcdef" for c in hexpart)
        ):
            raise OCIError(400, "DIGEST_INVALID", f"invalid digest {text!r}: want sha256:<64 hex> or sha512:<128 hex>")
        return cls(algorithm, hexpart)

    def hasher(self) -> "hashlib._Hash":
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_digest_reference(reference: str) -> bool:
    """A manifest reference is a digest when it contains a colon; tags cannot."""
    return ":" in reference


def validate_reference(reference: str) -> str:
    """``reference`` if it is a valid tag or digest; OCIError 400 (TAG_INVALID, DIGEST_INVALID) otherwise."""
    if is_digest_reference(reference):
        Digest.parse(reference)
    elif not _TAG_RE.fullmatch(reference):
        raise OCIError(400, "TAG_INVALID", f"invalid tag {reference!r}")
    return reference


_UPLOAD_ID = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9._=-]{0,255}")


def validate_api_tail(kind: str, rest: str) -> None:
    """What may follow ``/v2/<name>/<kind>/`` in a request passed upstream: a digest, a
    reference, ``list``, or an upload id of one opaque segment; OCIError 404 otherwise.

    The path goes upstream as the client wrote it, and ``..`` segments (percent-encoded
    too) would otherwise reach any path on the registry's host with the caller's
    credentials."""
    if kind == "manifests":
        validate_reference(rest)
    elif kind == "blobs":
        upload, _, upload_id = rest.partition("/")
        if upload == "uploads":
            if upload_id and not (_UPLOAD_ID.fullmatch(upload_id) and upload_id.strip(".")):
                raise OCIError(404, "BLOB_UPLOAD_UNKNOWN", f"invalid upload id {upload_id!r}")
        else:
            Digest.parse(rest)
    elif kind == "tags" and rest != "list":
        raise OCIError(404, "UNSUPPORTED", f"unknown tags path {rest!r}: want tags/list")
    elif kind == "referrers":
        Digest.parse(rest)


_REGISTRY_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # DNS: at most 63 characters a label, 253 a name
# host, host:port, [v6]:port — no user info, path or query. ASCII only, always fullmatch.
_REGISTRY_NAME_RE = re.compile(rf"(?:{_REGISTRY_LABEL}(?:\.{_REGISTRY_LABEL})*|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{{1,5}}))?")


def registry_name(text: str) -> str:
    """``host[:port]`` in lower case; ValueError for anything else (user info, path, a bad port)."""
    match = _REGISTRY_NAME_RE.fullmatch(text)
    if (match is None or not _valid_port(match["port"]) or not _valid_ipv6(match["ipv6"])
            or len(text.rpartition(":")[0] if match["port"] else text) > 253):
        raise ValueError(f"invalid registry name {text!r}: want host[:port]")
    return text.lower()


def _valid_port(port: str | None) -> bool:
    return port is None or 0 < int(port) < 65536


def _valid_ipv6(address: str | None) -> bool:
    if address is None:
        return True
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        return False
    return True


DOCKER_HUB = "docker.io"
DOCKER_HUB_UPSTREAM = "https://registry-1.docker.io"
_SCHEMES = ("http", "https")


def split_registry(value: str) -> tuple[str | None, str]:
    """``[http[s]://]host[:port][/]`` -> (scheme or None, registry name); ValueError otherwise."""
    scheme, sep, rest = value.strip().partition("://")
    if not sep:
        return None, registry_name(scheme.rstrip("/"))
    if scheme.lower() not in _SCHEMES:
        raise ValueError(f"invalid registry {value!r}: want [http[s]://]host[:port]")
    return scheme.lower(), registry_name(rest.rstrip("/"))


def normalize_upstream(value: str) -> str:
    """A registry URL without a trailing slash; ``https://`` when no scheme is given, and
    Docker Hub's API host for ``docker.io``.

    Raises ValueError for anything that is not ``[scheme://]host[:port]``.
    """
    scheme, name = split_registry(value)
    if scheme is None and name == DOCKER_HUB:
        return DOCKER_HUB_UPSTREAM
    return f"{scheme or 'https'}://{name}"



def parse_registry_mapping(item: str) -> tuple[str, str]:
    """``NAME=URL`` (or bare ``NAME``) -> (name, upstream URL)."""
    name, sep, url = item.partition("=")
    name = registry_name(name.strip())
    return name, normalize_upstream(url if sep else name)


def registry_base_url(registry: str, plain_http: bool) -> str:
    """The URL a registry name is reached at, by the mirror's rule (see normalize_upstream),
    over plain HTTP when asked (never for Docker Hub, which speaks only https)."""
    return normalize_upstream(f"http://{registry}" if plain_http and registry != DOCKER_HUB else registry)


@dataclass(frozen=True)
class ImageRef:
    """``[registry/]repository[:tag|@digest]``; a name without a registry host means Docker Hub."""

    registry: str
    repository: str
    reference: str

    @classmethod
    def parse(cls, text: str) -> "ImageRef":
        """ValueError, saying what is wrong, for anything but a valid reference."""
        name, reference = text, "latest"
        try:
            if "@" in name:
                name, reference = name.split("@", 1)
                Digest.parse(reference)
            else:
                before, _, tag = name.rpartition(":")
                if before and _TAG_RE.fullmatch(tag):  # not a port: a tag has no "/" after it
                    name, reference = before, tag
            first, _, rest = name.partition("/")
            if rest and ("." in first or ":" in first or first == "localhost"):
                registry, repository = first, rest
            else:
                registry, repository = DOCKER_HUB, name if rest else f"library/{name}"
            validate_repository(repository)
        except OCIError as error:
            raise ValueError(f"invalid image reference {text!r}: {error.message}") from None
        return cls(registry, repository, reference)

    def __str__(self) -> str:
        joiner = "@" if is_digest_reference(self.reference) else ":"
        return f"{self.registry}/{self.repository}{joiner}{self.reference}"


@dataclass(frozen=True)
class Origin:
    """Where a caller says the blob lives (an upstream URL and a repository), and the
    credentials it presented."""

    registry: str
    repository: str
    authorization: str | None = None
    # Private although no credentials come with it: a preheat of a private image tells a
    # peer so (its bytes come from seeds, which had the credentials).
    private: bool = False

    @property
    def protected(self) -> bool:
        """Fetched with credentials: served only to callers the registry confirms."""
        return self.authorization is not None or self.private


class SourceRefused(Exception):
    """The source answered with a client-facing status (401, 403, 404...) to pass back."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"source answered {status}")
        self.status = status
        self.headers = headers
        self.body = body


class SourceUnavailable(Exception):
    """The source cannot be reached or failed, or the blob cannot be had through this cache:
    the caller gets this status (502, 504, 507) with the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
