"""Which registry a mirror request is for, and how it is reached (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

from damselfly.core.oci import DOCKER_HUB, DOCKER_HUB_UPSTREAM, OCIError, split_registry


@dataclass(frozen=True)
class UpstreamResolver:
    """Finds the upstream of a request: X-Dragonfly-Registry, then ``ns``, then the default.

    Header and ``ns`` only name a registry: the operator's ``--registry`` map (and the
    default registry) decide how it is reached, any other name means ``https://NAME``, and
    a client cannot make the mirror speak plain HTTP to a host the operator did not name.
    """

    registries: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    def name_of(self, header: str | None, ns: str | None) -> str:
        """The registry name (host[:port], lower case) a request is for; OCIError 400 if refused."""
        if header:
            return self._checked(header)
        if ns:
            return self._checked(unquote(ns))
        if self.default:
            return split_registry(self.default)[1]
        raise OCIError(
            400,
            "UNSUPPORTED",
            "no upstream registry: the request has no ns parameter or X-Dragonfly-Registry header "
            "and no --default-registry is configured",
        )

    def for_name(self, name: str) -> str:
        """The upstream URL of a registry name (a peer's, say), by the same rule; OCIError 400 if refused."""
        name = self._checked(name)
        configured = self._configured(name)
        if configured:
            return configured
        return DOCKER_HUB_UPSTREAM if name == DOCKER_HUB else f"https://{name}"

    def resolve(self, header: str | None, ns: str | None) -> str:
        """The upstream URL of a request."""
        return self.for_name(self.name_of(header, ns))

    def _configured(self, name: str) -> str | None:
        """The URL the operator gave for ``name``: its --registry mapping, or the default registry."""
        if name in self.registries:
            return self.registries[name]
        if self.default and split_registry(self.default)[1] == name:
            return self.default
        return None

    def _checked(self, value: str) -> str:
        """The registry name in ``value``, refusing plain HTTP to a host the operator did not name."""
        try:
            scheme, name = split_registry(value)
        except ValueError as exc:
            raise OCIError(400, "UNSUPPORTED", str(exc)) from None
        if scheme == "http" and self._configured(name) is None:
            raise OCIError(400, "UNSUPPORTED", f"refusing plain-http registry {name!r}: only a registry mapped by "
                                               f"the mirror's --registry NAME=http://... is reached over http")
        return name
