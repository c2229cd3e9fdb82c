"""Which cluster a host belongs to, and whether a component is alive (pure).

A cluster's scopes name the hosts it takes: data centres (``idc``, several separated by
``|``), a location prefix (``A|B`` takes ``A|B`` and ``A|B|C``) and networks (CIDRs). A
host joins the cluster that matches it most specifically: a network match beats a data
centre match, which beats a location match; a longer network prefix and a deeper
location beat shorter ones. A cluster with no scopes takes every host, after every
cluster that names it; among equals the oldest cluster wins, so the choice is stable.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

ACTIVE, INACTIVE = "active", "inactive"
DEFAULT_CLUSTER = "default"


@dataclass(frozen=True)
class Scopes:
    idc: str | None = None
    location: str | None = None
    cidrs: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.idc and not self.location and not self.cidrs


@dataclass(frozen=True)
class Candidate:
    id: int
    scopes: Scopes = field(default_factory=Scopes)


@dataclass(frozen=True)
class HostFacts:
    idc: str | None = None
    location: str | None = None
    ip: str | None = None


def _location_parts(location: str) -> list[str]:
    return [part.strip() for part in location.split("|") if part.strip()]


def _cidr_score(cidrs: tuple[str, ...], ip: str | None) -> int:
    """The longest prefix among ``cidrs`` that holds ``ip``; -1 for none."""
    if not ip or not cidrs:
        return -1
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return -1
    best = -1
    for cidr in cidrs:
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if address.version == network.version and address in network:
            best = max(best, network.prefixlen)
    return best


def _idc_matches(scope: str | None, idc: str | None) -> bool:
    if not scope or not idc:
        return False
    return idc.strip().lower() in {part.strip().lower() for part in scope.split("|") if part.strip()}


def _location_depth(scope: str | None, location: str | None) -> int:
    """How many parts of ``location`` the scope's prefix covers; 0 when it is not a prefix."""
    if not scope or not location:
        return 0
    prefix, parts = _location_parts(scope), _location_parts(location)
    return len(prefix) if prefix and parts[:len(prefix)] == prefix else 0


def match_score(scopes: Scopes, host: HostFacts) -> tuple[int, int, int] | None:
    """How specifically ``scopes`` take ``host`` (higher is better), or None if they do not."""
    if scopes.empty:
        return (-1, 0, 0)
    cidr = _cidr_score(scopes.cidrs, host.ip)
    idc = 1 if _idc_matches(scopes.idc, host.idc) else 0
    location = _location_depth(scopes.location, host.location)
    if cidr < 0 and not idc and not location:
        return None
    return (cidr, idc, location)


def choose_cluster(candidates: list[Candidate], host: HostFacts) -> int | None:
    """The id of the cluster that takes ``host`` most specifically; None if none does (then
    the host goes to the cluster named ``default``)."""
    best: tuple[tuple[int, int, int], int] | None = None
    for candidate in candidates:
        score = match_score(candidate.scopes, host)
        if score is None:
            continue
        key = (score, -candidate.id)
        if best is None or key > (best[0], -best[1]):
            best = (score, candidate.id)
    return None if best is None else best[1]


def component_state(last_keepalive_at: datetime, now: datetime, inactive_after: float) -> str:
    """``active`` until ``inactive_after`` seconds pass without a keepalive."""
    return ACTIVE if now - last_keepalive_at <= timedelta(seconds=inactive_after) else INACTIVE


def active_since(now: datetime, inactive_after: float) -> datetime:
    """The oldest last keepalive of a component that still counts as active."""
    return now - timedelta(seconds=inactive_after)
