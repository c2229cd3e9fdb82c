"""containerd ``hosts.toml`` files that send pulls through the mirror (pure)."""

from __future__ import annotations

from pathlib import Path

from damselfly.core.oci import parse_registry_mapping


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def hosts_toml(mirror: str, server: str | None, registry: str | None) -> str:
    """A hosts.toml: the mirror first (pull, resolve), then the registry itself as fallback.

    With a ``registry``, the mirror is also told which registry a pull is for through the
    X-Dragonfly-Registry header; the mirror's own --registry map decides how to reach it.
    """
    mirror = mirror.rstrip("/")
    lines = []
    if server:
        lines.append(f"server = {_quote(server)}\n")
    lines.append(f"[host.{_quote(mirror)}]")
    lines.append('  capabilities = ["pull", "resolve"]')
    if registry:
        lines.append(f"  [host.{_quote(mirror)}.header]")
        lines.append(f"    X-Dragonfly-Registry = {_quote(registry)}")
    return "\n".join(lines) + "\n"


def _registry_entry(item: str) -> tuple[str, str, str]:
    """``NAME[=URL]`` -> (name, server URL, X-Dragonfly-Registry value).

    The header carries a scheme only when the user wrote a URL: a bare name lets the
    mirror apply its own rule (its --registry map, else https) instead of a guessed https.
    """
    name, server = parse_registry_mapping(item)
    return name, server, server if "=" in item else name


def write_hosts_dir(directory: Path, mirror: str, registries: list[str], default: bool) -> list[Path]:
    """Write ``DIR/NAME/hosts.toml`` for each ``NAME[=URL]`` and ``DIR/_default`` if asked."""
    written = []
    entries: list[tuple[str, str | None, str | None]] = [_registry_entry(item) for item in registries]
    if default:
        entries.append(("_default", None, None))
    for name, server, registry in entries:
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "hosts.toml"
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(hosts_toml(mirror, server, registry))
        tmp.replace(path)
        written.append(path)
    return written
