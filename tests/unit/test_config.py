"""Flags, DAMSELFLY_* variables and the config file, checked through click itself (no server starts)."""

import inspect
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from damselfly.cli import _mirror_settings, daemon, main, mirror_options, run, scheduler
from damselfly.config import SETTINGS_CONTEXT
from damselfly.settings import READ_TIMEOUT, default_data_dir, setting_key, setting_variable

SERVER_COMMANDS = {"run": run, "daemon": daemon, "scheduler": scheduler}


@click.command(context_settings=SETTINGS_CONTEXT)
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
    assert settings["registry"] == () and settings["default_registry"] is None
    assert settings["cache_quota"] == 50 * 1024**3


def test_precedence_flag_over_env_over_file(tmp_path):
    config = tmp_path / "damselfly.yaml"
    config.write_text("listen: 127.0.0.1:7000\ncache_quota: 1GiB\nregistry:\n  127.0.0.1:5000: http://127.0.0.1:5000\n"
                      "default-registry: ghcr.io\n")
    from_file = settings_of(["--config", str(config)])
    assert from_file["listen"] == ("127.0.0.1", 7000) and from_file["cache_quota"] == 1024**3
    assert from_file["registry"] == (("127.0.0.1:5000", "http://127.0.0.1:5000"),)
    assert from_file["default_registry"] == "https://ghcr.io"
    env = {"DAMSELFLY_LISTEN": "127.0.0.1:7001", "DAMSELFLY_REGISTRY": "a.io=http://a.io b.io"}
    from_env = settings_of(["--config", str(config)], env)
    assert from_env["listen"] == ("127.0.0.1", 7001)
    assert from_env["registry"] == (("a.io", "http://a.io"), ("b.io", "https://b.io"))
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


def _long_flag(option: click.Option) -> str:
    return next(opt for opt in option.opts if opt.startswith("--"))


def _server_options() -> list[tuple[str, click.Option]]:
    return [(name, param) for name, command in SERVER_COMMANDS.items() for param in command.params
            if isinstance(param, click.Option)]


def test_the_rule_names_each_setting_from_its_flag() -> None:
    assert setting_key("--data-dir") == setting_key("data-dir") == "data_dir"
    assert setting_variable("data_dir") == "DAMSELFLY_DATA_DIR"


@pytest.mark.parametrize(("command", "option"), _server_options(), ids=lambda x: x if isinstance(x, str) else x.name)
def test_every_server_option_is_named_by_its_key(command: str, option: click.Option) -> None:
    """click finds an option's variable (auto_envvar_prefix) and its config value (default_map)
    by the option's name, so the name must be the key the rule gives its flag."""
    assert option.name == setting_key(_long_flag(option))
    assert option.envvar is None, "the variable comes from the rule, not from a name written by hand"


def _parsed(command: str, args: list[str]) -> dict:
    """The values click gives ``command`` for ``args``, the environment and any config file; nothing runs."""
    return SERVER_COMMANDS[command].make_context(command, args).params


@pytest.mark.parametrize(("command", "flag", "text", "value"), [
    ("run", "--listen", "127.0.0.1:7000", ("127.0.0.1", 7000)),
    ("run", "--registry", "a.io=http://a.io", (("a.io", "http://a.io"),)),
    ("run", "--cache-quota", "1GiB", 1024**3),
    ("run", "--client-send-timeout", "5", 5.0),
    ("run", "--max-hosts", "7", 7),
    ("daemon", "--scheduler", "http://127.0.0.1:8002", "http://127.0.0.1:8002"),
    ("daemon", "--seed", "1", True),
    ("daemon", "--peer-send-timeout", "3", 3.0),
    ("scheduler", "--listen", ":8003", ("0.0.0.0", 8003)),
    ("scheduler", "--max-task-length", "1GiB", 1024**3),
])
def test_a_flag_its_variable_and_its_config_key_set_one_value(
        command: str, flag: str, text: str, value: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = setting_key(flag)
    required = ["--scheduler", "http://s"] if command == "daemon" and key != "scheduler" else []
    is_flag = next(p for p in SERVER_COMMANDS[command].params if p.name == key).is_flag
    assert _parsed(command, [*required, flag, *([] if is_flag else [text])])[key] == value
    config = tmp_path / "damselfly.yaml"
    config.write_text(f"{key}: {text!r}\n")
    assert _parsed(command, [*required, "--config", str(config)])[key] == value
    monkeypatch.setenv(setting_variable(key), text)
    assert _parsed(command, required)[key] == value


def _mirror_flags(args: list[str], tmp_path: Path) -> dict:
    """The values of `run`'s mirror flags, as the command hands them to _mirror_settings."""
    params = _parsed("run", [*args, "--data-dir", str(tmp_path)])
    return {name: params[name] for name in inspect.signature(_mirror_settings).parameters}


def test_read_timeout_sets_every_wait_and_each_wait_flag_only_its_own(tmp_path: Path) -> None:
    """--read-timeout keeps covering every wait it always did; the split flags narrow one each."""
    waits = ("upstream_read_timeout", "download_stall_timeout", "client_body_timeout", "client_send_timeout")
    default = _mirror_settings(**_mirror_flags([], tmp_path))
    assert [getattr(default, w) for w in waits] == [READ_TIMEOUT] * 4
    one_for_all = _mirror_settings(**_mirror_flags(["--read-timeout", "7"], tmp_path))
    assert [getattr(one_for_all, w) for w in waits] == [7.0] * 4
    narrowed = _mirror_settings(**_mirror_flags(["--read-timeout", "7", "--client-send-timeout", "2"], tmp_path))
    assert [getattr(narrowed, w) for w in waits] == [7.0, 7.0, 7.0, 2.0]
