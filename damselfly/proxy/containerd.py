"""containerd ``hosts.toml`` files that send pulls through the mirror (pure)."""

from __future__ import annotations

from pathlib import Path

from damselfly.proxy.upstream import parse_registry_mapping


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hosts_toml(mirror: str, server: str | None) -> str:
    """A hosts.toml: the mirror first (pull, resolve), then the registry itself as fallback.

    With a ``server``, the mirror is also told the exact upstream through the
    X-Dragonfly-Registry header, so a plain-http registry needs no daemon setting.
    """
    mirror = mirror.rstrip("/")
    lines = []
    if server:
        lines.append(f"server = {_quote(server)}\n")
    lines.append(f"[host.{_quote(mirror)}]")
    lines.append('  capabilities = ["pull", "resolve"]')
    if server:
        lines.append(f"  [host.{_quote(mirror)}.header]")
        lines.append(f"    X-Dragonfly-Registry = {_quote(server)}")
    return "\n".join(lines) + "\n"


def write_hosts_dir(directory: Path, mirror: str, registries: list[str], default: bool) -> list[Path]:
    """Write ``DIR/NAME/hosts.toml`` for each ``NAME[=URL]`` and ``DIR/_default`` if asked."""
    written = []
    entries: list[tuple[str, str | None]] = [parse_registry_mapping(item) for item in registries]
    if default:
        entries.append(("_default", None))
    for name, server in entries:
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "hosts.toml"
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(hosts_toml(mirror, server))
        tmp.replace(path)
        written.append(path)
    return written

