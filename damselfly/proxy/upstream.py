"""Which registry a mirror request is for, and how it is reached (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from damselfly.lib.oci import OCIError

DOCKER_HUB = "docker.io"
DOCKER_HUB_UPSTREAM = "https://registry-1.docker.io"
# host, host:port, [v6]:port — no user info, path or query.
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


def normalize_upstream(value: str) -> str:
    """A registry URL without a trailing slash; ``https://`` when no scheme is given.

    Raises ValueError for anything that is not ``scheme://host[:port]``.
    """
    value = value.strip().rstrip("/")
    if value == DOCKER_HUB:
        return DOCKER_HUB_UPSTREAM
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not _HOST_RE.match(parts.netloc) or parts.path or parts.query:
        raise ValueError(f"invalid registry {value!r}: want [http[s]://]host[:port]")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def parse_registry_mapping(item: str) -> tuple[str, str]:
    """``NAME=URL`` (or bare ``NAME``) -> (name, upstream URL)."""
    name, sep, url = item.partition("=")
    name = name.strip().lower()
    if not _HOST_RE.match(name):
        raise ValueError(f"invalid registry name {name!r}: want host[:port]")
    return name, normalize_upstream(url if sep else name)


@dataclass(frozen=True)
class UpstreamResolver:
    """Finds the upstream of a request: X-Dragonfly-Registry, then ``ns``, then the default."""

    registries: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    def for_name(self, name: str) -> str:
        name = name.strip().lower()
        if name in self.registries:
            return self.registries[name]
        return normalize_upstream(name)

    def resolve(self, header: str | None, ns: str | None) -> str:
        try:
            if header:
                header = header.strip()
                return self.registries.get(header.lower()) or normalize_upstream(header)
            if ns:
                return self.for_name(unquote(ns))
        except ValueError as exc:
            raise OCIError(400, "UNSUPPORTED", str(exc)) from None
        if self.default:
            return self.default
        raise OCIError(
            400,
            "UNSUPPORTED",
            "no upstream registry: the request has no ns parameter or X-Dragonfly-Registry header "
            "and no --default-registry is configured",
        )
