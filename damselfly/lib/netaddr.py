"""Listen addresses given as HOST:PORT, and where a URL may lead (pure)."""

from __future__ import annotations

from urllib.parse import urlsplit


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:65001``, ``[::1]:65001`` or ``:65001`` (all interfaces) -> (host, port)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid listen address {text!r}: want HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"invalid listen address {text!r}: put IPv6 hosts in brackets, [::1]:PORT")
    return host or "0.0.0.0", int(port_text)


def may_lead_to(url: str, target: str) -> bool:
    """Whether a request to ``url`` may lead to the absolute ``target`` (a redirect, a token
    service): over http(s) only, and never from https down to plain http, where whoever
    names a registry could make this host fetch, in clear, any service plain HTTP reaches."""
    scheme = urlsplit(target).scheme.lower()
    return scheme == "https" or (scheme == "http" and urlsplit(url).scheme.lower() != "https")
