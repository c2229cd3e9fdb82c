"""Click glue for settings: a flag beats its DAMSELFLY_* variable, which beats the YAML config file.

The naming rule is damselfly.settings's; click applies it. A command made with
``context_settings=SETTINGS_CONTEXT`` reads the variable of each option by the option's
name (click's ``auto_envvar_prefix``), and ``--config`` fills click's ``default_map``,
also by name. So each option's name must be its setting key: ``--registry`` has the name
``registry``, never ``registries``.
"""

from __future__ import annotations

from typing import Any

import click

from damselfly.settings import ENV_PREFIX, setting_key

SETTINGS_CONTEXT: dict[str, Any] = {"auto_envvar_prefix": ENV_PREFIX}


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
    known = {p.name: p for p in params if isinstance(p, click.Option) and p.name and p.name != "config"}
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = setting_key(str(key))
        param = known.get(name)
        if param is None:
            raise click.BadParameter(f"unknown key {key!r} in {path}; known keys: {', '.join(sorted(known))}",
                                     param_hint="--config")
        if param.multiple and isinstance(value, dict):
            value = [f"{k}={v}" for k, v in value.items()]  # registry: {name: url}
        elif param.multiple and not isinstance(value, list):
            value = [value]
        values[name] = value
    return values


def load_config_file(ctx: click.Context, _: click.Parameter, path: str | None) -> str | None:
    """Eager callback of ``--config``: the file's values become the command's defaults."""
    if path:
        ctx.default_map = {**(ctx.default_map or {}), **_file_values(path, ctx.command.params)}
    return path


def config_option(f: Any) -> Any:
    """``--config FILE`` (or DAMSELFLY_CONFIG, on a command with SETTINGS_CONTEXT)."""
    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=load_config_file,
                        help="YAML file whose keys are the flag names (data_dir, registry, ...).")(f)
