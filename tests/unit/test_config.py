"""Flags, DAMSELFLY_* variables and the config file, checked through click itself."""

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from damselfly.cli import main, mirror_options
from damselfly.config import default_data_dir


@click.command()
@mirror_options(default_listen="127.0.0.1:65001")
def show(**settings):
    click.echo(repr(sorted((k, str(v) if isinstance(v, Path) else v) for k, v in settings.items())))


def settings_of(args, env=None) -> dict:
    result = CliRunner().invoke(show, args, env=env or {})
    assert result.exit_code == 0, result.output
    return dict(eval(result.output))  # noqa: S307 - our own repr of plain values


def test_defaults():
    settings = settings_of([])
    assert settings["listen"] == ("127.0.0.1", 65001)
    assert settings["registries"] == () and settings["default_registry"] is None
    assert settings["cache_quota"] == 50 * 1024**3


def test_precedence_flag_over_env_over_file(tmp_path):
    config = tmp_path / "damselfly.yaml"
    config.write_text("listen: 127.0.0.1:7000\ncache_quota: 1GiB\nregistry:\n  127.0.0.1:5000: http://127.0.0.1:5000\n"
                      "default-registry: ghcr.io\n")
    from_file = settings_of(["--config", str(config)])
    assert from_file["listen"] == ("127.0.0.1", 7000) and from_file["cache_quota"] == 1024**3
    assert from_file["registries"] == (("127.0.0.1:5000", "http://127.0.0.1:5000"),)
    assert from_file["default_registry"] == "https://ghcr.io"
    env = {"DAMSELFLY_LISTEN": "127.0.0.1:7001", "DAMSELFLY_REGISTRY": "a.io=http://a.io b.io"}
    from_env = settings_of(["--config", str(config)], env)
    assert from_env["listen"] == ("127.0.0.1", 7001)
    assert from_env["registries"] == (("a.io", "http://a.io"), ("b.io", "https://b.io"))
    assert settings_of(["--config", str(config), "--listen", ":7002"], env)["listen"] == ("0.0.0.0", 7002)
    assert settings_of([], {"DAMSELFLY_CONFIG": str(config)})["cache_quota"] == 1024**3


@pytest.mark.parametrize("args,message", [
    (["--listen", "nonsense"], "invalid listen address"),
    (["--cache-quota", "lots"], "invalid size"),
    (["--registry", "bad/name=http://x"], "invalid registry name"),
    (["--default-registry", "ftp://x"], "invalid registry"),
    (["--config", "/nonexistent/damselfly.yaml"], "cannot read config file"),
])
def test_bad_flags_exit_2_with_one_line(args, message):
    result = CliRunner().invoke(show, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_bad_config_files(tmp_path):
    for text, message in [("nope: 1\n", "unknown key 'nope'"), ("[1, 2]\n", "must be a mapping"), (":\n  - [", "not valid YAML")]:
        config = tmp_path / "bad.yaml"
        config.write_text(text)
        result = CliRunner().invoke(show, ["--config", str(config)])
        assert result.exit_code == 2 and message in result.output


def test_containerd_config_command(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["containerd-config", "--mirror", "http://127.0.0.1:65001", "--dir", str(tmp_path),
                                  "--registry", "127.0.0.1:5000=http://127.0.0.1:5000", "--registry", "127.0.0.1:5001",
                                  "--default"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "127.0.0.1:5000/hosts.toml").read_text().startswith('server = "http://127.0.0.1:5000"')
    assert 'X-Dragonfly-Registry = "127.0.0.1:5001"\n' in (tmp_path / "127.0.0.1:5001/hosts.toml").read_text()
    assert (tmp_path / "_default/hosts.toml").exists()
    assert runner.invoke(main, ["containerd-config", "--mirror", "http://m", "--dir", str(tmp_path)]).exit_code == 2
    bad = runner.invoke(main, ["containerd-config", "--mirror", "ftp://m", "--dir", str(tmp_path), "--default"])
    assert bad.exit_code == 2 and "invalid registry" in bad.output


def test_the_default_data_directory_follows_the_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Root gets the system's place; anyone else (a laptop) their XDG data directory."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_data_dir() == Path("/var/lib/damselfly")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg/damselfly"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home/.local/share/damselfly"
