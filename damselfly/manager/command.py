"""`damselfly manager`: the manager's REST API and console in one process.

Its flags follow the rule of the other server commands (a flag, its DAMSELFLY_* variable,
a config file key); damselfly/cli.py adds the ``--config`` option when it adds the
command, since the config file's reader sits above the roles. The first root password
comes from DAMSELFLY_ROOT_PASSWORD only, never a flag: a flag shows in `ps`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from damselfly.lib.logs import LOG_LEVELS, configure_logging
from damselfly.lib.netaddr import parse_listen
from damselfly.settings import (ENV_PREFIX, MANAGER_INACTIVE_AFTER, MANAGER_KEEPALIVE_INTERVAL, ManagerSettings,
                                default_data_dir)

log = logging.getLogger("damselfly.manager")
ROOT_PASSWORD_VARIABLE = f"{ENV_PREFIX}_ROOT_PASSWORD"


class ListenAddress(click.ParamType):  # type: ignore[type-arg] # generic in newer click only
    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_listen(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


@click.command("manager", context_settings={"auto_envvar_prefix": ENV_PREFIX})
@click.option("--listen", type=ListenAddress(), default="127.0.0.1:8080", show_default=True,
              help="Address of the API and the console.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=default_data_dir,
              show_default="/var/lib/damselfly as root, else $XDG_DATA_HOME/damselfly",
              help="Where the default SQLite database (manager.db) lives.")
@click.option("--database", default=None, show_default="sqlite:///DATA_DIR/manager.db",
              help="sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB. Migrations are applied at start.")
@click.option("--tls-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The manager's cluster identity (role manager): HTTPS, and components register with their "
                   "certificates. Without it, components may register only over loopback.")
@click.option("--keepalive-interval", type=click.FloatRange(0.1), default=MANAGER_KEEPALIVE_INTERVAL,
              show_default=True, help="Seconds between a component's keepalives, told to it at registration.")
@click.option("--inactive-after", type=click.FloatRange(0.1), default=MANAGER_INACTIVE_AFTER, show_default=True,
              help="Seconds without a keepalive after which a component shows inactive.")
@click.option("--redis", default=None, metavar="URL",
              help="redis://HOST:PORT/DB shared with the schedulers (started with the same --redis): where preheat "
                   "jobs are queued. Without it, jobs reach only a scheduler in this process (`damselfly run`).")
@click.option("--registry", "registries", multiple=True, metavar="NAME=URL",
              help="The upstream of registry NAME, for resolving images to preheat (repeatable). Unmapped names "
                   "mean https://NAME; plain http is used only for these and for registries on loopback.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
def manager(listen: tuple[str, int], data_dir: Path, database: str | None, tls_dir: Path | None,
            keepalive_interval: float, inactive_after: float, redis: str | None, registries: tuple[str, ...], log_level: str) -> None:
    """Run the manager: clusters, their configuration and members, users and tokens, the console."""
    from damselfly.lib.serve import Site, serve
    from damselfly.lib.tls import is_loopback
    from damselfly.manager.api import ManagerService, server_context
    from damselfly.manager.database import database_url

    configure_logging(log_level)
    if inactive_after <= keepalive_interval:
        raise click.BadParameter("must be longer than --keepalive-interval, or live components flap inactive",
                                 param_hint="--inactive-after")
    root_password = os.environ.get(ROOT_PASSWORD_VARIABLE) or None
    if root_password is not None and len(root_password) < 12:
        raise click.ClickException(f"{ROOT_PASSWORD_VARIABLE} must be at least 12 characters")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create {data_dir}: {exc.strerror}", param_hint="--data-dir") from None
    try:
        database_url(database, data_dir)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--database") from None
    if redis:
        from damselfly.lib.kv import check_url

        try:
            check_url(redis)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--redis") from None
    from damselfly.core.oci import parse_registry_mapping

    try:
        registry_map = dict(parse_registry_mapping(item) for item in registries)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--registry") from None
    tls = _manager_tls(tls_dir)
    if tls is None and not is_loopback(listen[0]):
        log.warning("the manager listens on %s without --tls-dir: passwords and tokens cross the network in clear, "
                    "and components can register only from this machine", listen[0])
    settings = ManagerSettings(data_dir=data_dir, listen=listen, database=database, tls=tls,
                               root_password=root_password, keepalive_interval=keepalive_interval,
                               inactive_after=inactive_after, redis=redis or None,
                               registries=registry_map)
    try:
        service = ManagerService.open(settings)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    log.info("manager listening on %s://%s:%d", "https" if tls else "http", *listen)
    try:
        serve([Site(service.application(), listen[0], listen[1], server_context(tls) if tls else None)],
              on_stopping=service.close)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror or exc}") from None


def _manager_tls(tls_dir: Path | None) -> Any:
    if tls_dir is None:
        return None
    from damselfly.lib.tls import ClusterTLS, TLSError

    try:
        return ClusterTLS.load(tls_dir, "manager")
    except TLSError as error:
        raise click.BadParameter(str(error), param_hint="--tls-dir") from None
