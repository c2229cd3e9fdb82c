"""Listen addresses given as HOST:PORT (pure)."""

from __future__ import annotations


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
