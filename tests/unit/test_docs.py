"""The documentation keeps up with the code: every flag of every command is described in
docs/configuration.md, the README stays short, and relative links lead to files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from damselfly.cli import main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
README_LIMIT = 10 * 1024
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # https:, mailto:, ...


def _commands() -> list[tuple[str, click.Command]]:
    """Every leaf command under `damselfly`, the lazily loaded nydus group included."""
    found: list[tuple[str, click.Command]] = []

    def walk(command: click.Command, path: list[str], parent: click.Context | None) -> None:
        ctx = click.Context(command, info_name=path[-1], parent=parent)
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, f"{' '.join(path)} lists {name} but cannot load it"
                walk(sub, [*path, name], ctx)
        else:
            found.append((" ".join(path), command))

    walk(main, ["damselfly"], None)
    return found


def _long_flags() -> list[tuple[str, str]]:
    flags = []
    for path, command in _commands():
        for param in command.params:
            if isinstance(param, click.Option):
                flags.extend((path, opt) for opt in param.opts if opt.startswith("--") and opt != "--help")
    return flags


def test_the_command_tree_includes_the_lazy_nydus_group() -> None:
    paths = {path for path, _ in _commands()}
    assert {"damselfly run", "damselfly daemon", "damselfly scheduler", "damselfly ca init", "damselfly ca issue",
            "damselfly containerd-config", "damselfly nydus convert", "damselfly nydus mount",
            "damselfly nydus serve"} <= paths


@pytest.mark.parametrize(("command", "flag"), _long_flags())
def test_every_flag_is_in_the_configuration_doc(command: str, flag: str) -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    # The flag as a word of its own: --cache-quota must not count as --cache-quota-x, nor the reverse.
    assert re.search(re.escape(flag) + r"(?![A-Za-z0-9-])", text), \
        f"{command} {flag} is not described in docs/configuration.md"


def test_the_configuration_doc_lists_each_commands_section() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    for path, _ in _commands():
        assert f"`{path}`" in text, f"docs/configuration.md has no section for `{path}`"


def test_the_readme_is_under_10_kib() -> None:
    size = README.stat().st_size
    assert size < README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT}"


def _documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(document: Path) -> None:
    text = re.sub(r"```.*?```", "", document.read_text(encoding="utf-8"), flags=re.DOTALL)  # code blocks hold no links
    missing = []
    for target in LINK.findall(text):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (document.parent / path).exists():
            missing.append(target)
    assert not missing, f"{document.relative_to(ROOT)} links to files that do not exist: {missing}"


def test_the_link_pattern_finds_links() -> None:
    sample = "see [a](docs/a.md), ![plot](x/y.png \"title\") and [b](https://example.com) and [c](#top)"
    assert LINK.findall(sample) == ["docs/a.md", "x/y.png", "https://example.com", "#top"]
