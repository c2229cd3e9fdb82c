"""Settings from flags, DAMSELFLY_* variables and a YAML config file, in that order.

Each flag ``--some-flag`` has the config key ``some_flag`` and the variable
``DAMSELFLY_SOME_FLAG``. The config file fills click's ``default_map``, so a flag or a
variable always wins over the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/damselfly")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "damselfly"


def _file_values(path: str, params: list[click.Parameter]) -> dict[str, Any]:
    import yaml  # only with --config: every command start (a lazy mount on each node) skips its 10 ms

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise click.BadParameter(f"cannot read config file: {exc.strerror}", param_hint="--config") from None
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"config file is not valid YAML: {exc}", param_hint="--config") from None
    if not isinstance(data, dict):
        raise click.BadParameter("config file must be a mapping of keys to values", param_hint="--config")
    known = {_key(p): p for p in params if isinstance(p, click.Option) and p.name != "config"}
    values: dict[str, Any] = {}
    for key, value in data.items():
        param = known.get(str(key).replace("-", "_"))
        if param is None or param.name is None:
            raise click.BadParameter(f"unknown key {key!r} in {path}; known keys: {', '.join(sorted(known))}",
                                     param_hint="--config")
        if param.multiple and isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]  # registry: {name: url}
        elif param.multiple and not isinstance(value, list):
            value = [value]
        values[param.name] = value
    return values


def _key(option: click.Option) -> str:
    """The config key of an option: its long flag without dashes (--data-dir -> data_dir)."""
    flag = next(o for o in option.opts if o.startswith("--"))
    return flag[2:].replace("-", "_")


def load_config_file(ctx: click.Context, _: click.Parameter, path: str | None) -> str | None:
    """Eager callback of ``--config``: the file's values become the command's defaults."""
    if path:
        ctx.default_map = {**(ctx.default_map or {}), **_file_values(path, ctx.command.params)}
    return path


def config_option(f: Any) -> Any:
    return click.option("--config", type=click.Path(dir_okay=False), envvar="DAMSELFLY_CONFIG", is_eager=True,
                        expose_value=False, callback=load_config_file,
                        help="YAML file whose keys are the flag names (data_dir, registry, ...).")(f)
