"""The ``damselfly`` command."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import click

from damselfly import __version__
from damselfly.config import SETTINGS_CONTEXT, config_option
from damselfly.lib.logs import LOG_LEVELS, configure_logging
from damselfly.lib.netaddr import parse_listen
from damselfly.core.oci import normalize_upstream
from damselfly.lib.units import parse_size
from damselfly.core.oci import parse_registry_mapping
from damselfly.settings import (CACHE_HIGH_WATERMARK, CACHE_LOW_WATERMARK, CACHE_QUOTA, CONNECT_TIMEOUT, MAX_HOSTS,
                                MAX_TASK_LENGTH, MAX_TASKS, READ_TIMEOUT, SCHEDULER_REFRESH_INTERVAL, STALE_TAG_TTL,
                                UPLOAD_SLOTS, ManagerLink, MirrorSettings, PeerSettings, SchedulerSettings, default_data_dir)

if TYPE_CHECKING:
    from damselfly.lib.serve import Site
    from damselfly.lib.tls import ClusterTLS


class Parsed(click.ParamType):
    """A flag value checked by one of our pure parsers; its ValueError becomes a usage error."""

    def __init__(self, name: str, parse: Callable[[Any], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):  # already parsed: a default, or a value given twice
            return value
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


LISTEN_ADDRESS = Parsed("HOST:PORT", lambda v: parse_listen(str(v)))
LISTEN_OR_OFF = Parsed("HOST:PORT|off", lambda v: None if str(v).strip().lower() == "off" else parse_listen(str(v)))
SIZE = Parsed("SIZE", parse_size)
REGISTRY_MAPPING = Parsed("NAME=URL", lambda v: parse_registry_mapping(str(v)))
UPSTREAM_URL = Parsed("URL", lambda v: normalize_upstream(str(v)))


def _with(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """Several click options as one decorator, in the order listed."""
    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def _wait_option(flag: str, help: str) -> Callable[[Any], Any]:
    """One of the waits --read-timeout sets; its own flag overrides it for that wait alone."""
    return click.option(flag, type=click.FloatRange(0.1), default=None, show_default="--read-timeout", help=help)


def _wait(seconds: float | None, read_timeout: float) -> float:
    """A wait's own flag when given, else --read-timeout."""
    return read_timeout if seconds is None else seconds


log_level_option = click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)


def mirror_options(default_listen: str) -> Callable[[Any], Any]:
    """The mirror flags shared by every command that serves the mirror."""
    return _with([
        click.option("--listen", type=LISTEN_ADDRESS, default=default_listen, show_default=True,
                     help="Address of the mirror (containerd and nydus send their requests here)."),
        click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=default_data_dir,
                     show_default="/var/lib/damselfly as root, else $XDG_DATA_HOME/damselfly",
                     help="Where blobs are cached."),
        click.option("--registry", type=REGISTRY_MAPPING, multiple=True,
                     help="NAME=URL: the upstream of registry NAME (the ns value or X-Dragonfly-Registry). "
                          "Repeatable. Unmapped names mean https://NAME."),
        click.option("--default-registry", type=UPSTREAM_URL, default=None,
                     help="Upstream for requests that name no registry."),
        click.option("--cache-quota", type=SIZE, default=CACHE_QUOTA, show_default="50GiB",
                     help="Disk space the blob cache may use."),
        click.option("--cache-high-watermark", type=click.FloatRange(0.01, 1.0), default=CACHE_HIGH_WATERMARK,
                     show_default=True, help="Fraction of the quota that starts eviction."),
        click.option("--cache-low-watermark", type=click.FloatRange(0.01, 1.0), default=CACHE_LOW_WATERMARK,
                     show_default=True, help="Fraction of the quota that eviction brings usage down to."),
        click.option("--connect-timeout", type=click.FloatRange(0.1), default=CONNECT_TIMEOUT, show_default=True,
                     help="Seconds to connect to an upstream registry."),
        click.option("--read-timeout", type=click.FloatRange(0.1), default=READ_TIMEOUT, show_default=True,
                     help="Seconds the other side of any wait below may stay silent before it is given up on: "
                          "the default of --upstream-read-timeout, --download-stall-timeout, --client-body-timeout, "
                          "--client-send-timeout and --peer-send-timeout."),
        _wait_option("--upstream-read-timeout",
                     "Seconds an upstream registry may send nothing of its answer, or take nothing of a pushed body "
                     "(then 502 or 504)."),
        _wait_option("--download-stall-timeout",
                     "Seconds a download, from peers or the registry, may make no progress before the clients "
                     "waiting on it get an error."),
        _wait_option("--client-body-timeout", "Seconds a client may pause while sending a request body (then 408)."),
        _wait_option("--client-send-timeout",
                     "Seconds a client may take nothing of one send (4 MiB; 32 KiB of a cached blob) before it is "
                     "cut off."),
        click.option("--stale-tag-ttl", type=click.FloatRange(0), default=STALE_TAG_TTL, show_default="86400 (24 h)",
                     help="Seconds a tag's last resolution is served while its registry fails (connection error, "
                          "timeout, 5xx, 429); 0 never serves a stale tag."),
        log_level_option,
        config_option,
    ])


class LazyGroup(click.Group):
    """Subcommands whose imports are heavy load only when used: `damselfly run` and `daemon`
    start without the nydus codecs, registry client and FUSE binding."""

    LAZY = {"nydus": ("damselfly.nydus.cli", "nydus")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY:
            module, attribute = self.LAZY[name]
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="damselfly")
def main() -> None:
    """Damselfly: a registry mirror with a peer-to-peer backend for containerd and nydus."""


def _mirror_settings(data_dir: Path, registry: tuple[tuple[str, str], ...], default_registry: str | None,
                     cache_quota: int, cache_high_watermark: float, cache_low_watermark: float,
                     connect_timeout: float, read_timeout: float, upstream_read_timeout: float | None,
                     download_stall_timeout: float | None, client_body_timeout: float | None,
                     client_send_timeout: float | None, stale_tag_ttl: float) -> MirrorSettings:
    if cache_low_watermark > cache_high_watermark:
        raise click.BadParameter("must not exceed --cache-high-watermark", param_hint="--cache-low-watermark")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create {data_dir}: {exc.strerror}", param_hint="--data-dir") from None
    _check_upstream_proxies()
    return MirrorSettings(
        data_dir=data_dir, registries=dict(registry), default_registry=default_registry, cache_quota=cache_quota,
        cache_high_watermark=cache_high_watermark, cache_low_watermark=cache_low_watermark,
        connect_timeout=connect_timeout, upstream_read_timeout=_wait(upstream_read_timeout, read_timeout),
        download_stall_timeout=_wait(download_stall_timeout, read_timeout),
        client_body_timeout=_wait(client_body_timeout, read_timeout),
        client_send_timeout=_wait(client_send_timeout, read_timeout), stale_tag_ttl=stale_tag_ttl)


def _check_upstream_proxies() -> None:
    """Refuse a proxy that the registry client cannot use before serving, rather than answer
    every pull with 502; and tell the operator which proxies upstream requests take."""
    from damselfly.lib.blockinghttp import environment_proxies, environment_variable, proxy_problem, without_credentials

    for name, proxy in environment_proxies(os.environ).items():
        problem = proxy_problem(proxy)
        if problem:
            raise click.ClickException(f"{name}: {problem}")
        logging.getLogger("damselfly").info("upstream registries: %s=%s (no_proxy=%s)", name,
                                            without_credentials(proxy),
                                            environment_variable(os.environ, "no_proxy"))


def _serve(sites: "list[Site]", started: Any = None, stopping: Any = None) -> None:
    from damselfly.lib.serve import serve

    for site in sites:
        logging.getLogger("damselfly").info("listening on %s://%s:%d", "https" if site.tls else "http", site.host,
                                            site.port)
    try:
        serve(sites, started, stopping)
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc.strerror or exc}") from None


def _url(address: tuple[str, int], tls: bool = False) -> str:
    host, port = address
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


tls_options = [
    click.option("--tls-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="This host's cluster identity (ca.pem, cert.pem, key.pem from `damselfly ca issue`): the "
                      "scheduler API, seed triggers and the upload server speak HTTPS and admit only members."),
    click.option("--insecure", is_flag=True,
                 help="Without --tls-dir, listen for peers on a non-loopback address anyway (anyone who reaches "
                      "it can poison the cache and read private blobs)."),
]


scheduler_limit_options = [
    click.option("--max-task-length", type=SIZE, default=MAX_TASK_LENGTH, show_default="1TiB",
                 help="The longest blob the scheduler takes a task for (longer registers get 413)."),
    click.option("--max-hosts", type=click.IntRange(1), default=MAX_HOSTS, show_default=True,
                 help="Hosts the scheduler keeps at once; more get 429."),
    click.option("--max-tasks", type=click.IntRange(1), default=MAX_TASKS, show_default=True,
                 help="Tasks the scheduler keeps at once; past it, the oldest without peers is forgotten."),
]


def _cluster_tls(tls_dir: Path | None, *roles: str) -> "ClusterTLS | None":
    """The host's cluster identity, which must hold every one of ``roles``."""
    if tls_dir is None:
        return None
    from damselfly.lib.tls import ClusterTLS, TLSError

    try:
        return ClusterTLS.load(tls_dir, *roles)
    except TLSError as exc:
        raise click.BadParameter(str(exc), param_hint="--tls-dir") from None


def _warn_if_mirror_exposed(listen: tuple[str, int]) -> None:
    """The mirror port is plain HTTP for containerd and nydusd on this host: say so when it faces a network."""
    from damselfly.lib.tls import is_loopback

    if not is_loopback(listen[0]):
        logging.getLogger("damselfly").warning(
            "the mirror listens on %s: plain HTTP that serves cached blobs to any client that reaches it (private "
            "ones after a registry check); keep --listen on loopback unless a proxy in front admits clients", listen[0])


def _guard_exposure(what: str, option: str, address: tuple[str, int], tls: "ClusterTLS | None", insecure: bool) -> None:
    """Peers' ports admit only cluster members; without certificates, only this machine."""
    from damselfly.lib.tls import is_loopback

    if tls is not None or is_loopback(address[0]):
        return
    if not insecure:
        raise click.BadParameter(f"{what} on {address[0]} would admit any host that reaches it: give --tls-dir "
                                 f"(see `damselfly ca`), listen on loopback, or pass --insecure", param_hint=option)
    logging.getLogger("damselfly").warning("%s listens on %s without --tls-dir (--insecure): any host that reaches it "
                                           "can poison the cache, read private blobs and see credentials", what,
                                           address[0])


manager_option = click.option(
    "--manager", default=None, metavar="URL",
    help="Register with the manager at URL, keep alive, and apply the cluster's configuration. A bare HOST:PORT "
         "means https:// with --tls-dir, else http://.")


def _manager_link(url: str | None, tls: "ClusterTLS | None", cluster: str | None = None,
                  scheduler_refresh_interval: float = SCHEDULER_REFRESH_INTERVAL) -> ManagerLink | None:
    """--manager as a link: https with a cluster identity (the manager then admits the
    certificate); plain http only without one (the manager admits it from loopback)."""
    if url is None:
        return None
    url = _member_url(url, tls is not None, "--manager")
    if cluster and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", cluster):
        raise click.BadParameter(f"{cluster!r}: letters, digits and . _ @ - (at most 64, the first a letter or "
                                 "digit)", param_hint="--cluster")
    return ManagerLink(url, cluster or None, scheduler_refresh_interval)


peer_options = [
    click.option("--upload-listen", type=LISTEN_ADDRESS,
                 help="Address of the upload server; other peers use it as given (use a routable IP)."),
    click.option("--idc", default="", help="Data centre of this host (scheduling affinity)."),
    click.option("--location", default="", help="Location path A|B|C (affinity)."),
    click.option("--host-id", default="", help="Unique id of this host [hostname:port]."),
    click.option("--upload-slots", type=click.IntRange(1, 4096), default=UPLOAD_SLOTS, show_default=True,
                 help="Pieces this host uploads at once; the scheduler also caps its children with it."),
    click.option("--upload-rate", type=SIZE, default=None,
                 help="Upload bandwidth cap in bytes per second (e.g. 100MB); none by default."),
    _wait_option("--peer-send-timeout",
                 "Seconds a peer may take nothing of one send of pieces before it is cut off, freeing the slot."),
]


@main.command(context_settings=SETTINGS_CONTEXT)
@mirror_options(default_listen="127.0.0.1:65001")
@click.option("--scheduler-listen", type=LISTEN_ADDRESS, default="127.0.0.1:8002", show_default=True,
              help="Address of the built-in scheduler (other daemons may join it).")
@click.option("--manager-listen", type=LISTEN_OR_OFF, default="127.0.0.1:8080", show_default=True,
              help="Address of the built-in manager and its console, which the scheduler and the seed register "
                   "with; off for none. If the address is taken, run goes on without them.")
@_with(peer_options)
@_with(tls_options)
@_with(scheduler_limit_options)
def run(listen: tuple[str, int], log_level: str, scheduler_listen: tuple[str, int],
        manager_listen: tuple[str, int] | None, upload_listen: tuple[str, int] | None, idc: str, location: str,
        host_id: str, upload_slots: int, upload_rate: int | None, peer_send_timeout: float | None,
        tls_dir: Path | None, insecure: bool, max_task_length: int, max_hosts: int, max_tasks: int,
        **mirror: Any) -> None:
    """Run an all-in-one node: scheduler, seed peer, mirror and manager in one process."""
    from damselfly.node import EmbeddedScheduler, Node

    configure_logging(log_level)
    tls = _cluster_tls(tls_dir, "seed", "scheduler")
    upload_listen = upload_listen or ("127.0.0.1", 65002)
    _guard_exposure("the scheduler", "--scheduler-listen", scheduler_listen, tls, insecure)
    _guard_exposure("the upload server", "--upload-listen", upload_listen, tls, insecure)
    _warn_if_mirror_exposed(listen)
    mirror_settings = _mirror_settings(**mirror)
    node = Node(mirror_settings, PeerSettings(
        schedulers=[_url(scheduler_listen, tls is not None)], upload_host=upload_listen[0],
        upload_port=upload_listen[1], seed=True, idc=idc, location=location, host_id=_host_id(host_id, tls),
        upload_slots=upload_slots, upload_rate=upload_rate,
        peer_send_timeout=_wait(peer_send_timeout, mirror["read_timeout"]), tls=tls),
        EmbeddedScheduler(SchedulerSettings(max_task_length, max_hosts, max_tasks), scheduler_listen),
        _embedded_manager(manager_listen, mirror_settings.data_dir, tls, mirror_settings.registries))
    _serve(node.sites(listen), node.started, node.stopping)


def _embedded_manager(listen: tuple[str, int] | None, data_dir: Path, tls: "ClusterTLS | None",
                      registries: dict[str, str]) -> Any:
    """The manager `run` embeds (SQLite in its data dir), or None: turned off, or a
    certificate without the role manager (components could not check it is their manager)."""
    from damselfly.manager.command import ROOT_PASSWORD_VARIABLE
    from damselfly.node import EmbeddedManager
    from damselfly.settings import ManagerSettings

    if listen is None:
        return None
    log = logging.getLogger("damselfly")
    if tls is not None and not tls.identity.has_role("manager"):
        log.warning("the certificate of %s has no role manager: running without the embedded manager and its "
                    "console (issue it with --role seed --role scheduler --role manager to have them)",
                    tls.identity.name)
        return None
    if tls is None:
        from damselfly.lib.tls import is_loopback

        if not is_loopback(listen[0]):
            raise click.BadParameter("without --tls-dir the manager listens on loopback only: passwords and tokens "
                                     "would cross the network in clear", param_hint="--manager-listen")
    root_password = os.environ.get(ROOT_PASSWORD_VARIABLE) or None
    if root_password is not None and len(root_password) < 12:
        raise click.ClickException(f"{ROOT_PASSWORD_VARIABLE} must be at least 12 characters")
    return EmbeddedManager(ManagerSettings(data_dir=data_dir, listen=listen, tls=tls, root_password=root_password,
                                           registries=registries))


def _host_id(host_id: str, tls: "ClusterTLS | None") -> str:
    if tls is not None and host_id and host_id != tls.identity.name:
        raise click.BadParameter(f"with --tls-dir the host id is the certificate's name, {tls.identity.name!r}",
                                 param_hint="--host-id")
    return host_id


@main.command(context_settings=SETTINGS_CONTEXT)
@mirror_options(default_listen="127.0.0.1:65001")
@click.option("--scheduler", default=None,
              help="Scheduler URLs, comma-separated; each task goes to one of them on a hash ring. Without it, "
                   "the schedulers of this host's cluster, from --manager.")
@click.option("--seed", is_flag=True, help="Be a seed peer: the only kind that reads the origin.")
@manager_option
@click.option("--scheduler-refresh-interval", type=click.FloatRange(0.1), default=SCHEDULER_REFRESH_INTERVAL,
              show_default=True,
              help="Without --scheduler: seconds before a changed list of schedulers from the manager replaces "
                   "the one in use.")
@_with(peer_options)
@_with(tls_options)
def daemon(listen: tuple[str, int], log_level: str, scheduler: str | None, seed: bool, manager: str | None,
           scheduler_refresh_interval: float, upload_listen: tuple[str, int] | None, idc: str, location: str,
           host_id: str, upload_slots: int, upload_rate: int | None, peer_send_timeout: float | None,
           tls_dir: Path | None, insecure: bool, **mirror: Any) -> None:
    """Run a peer (or, with --seed, a seed peer): the mirror plus an upload server."""
    from damselfly.node import Node

    configure_logging(log_level)
    if not scheduler and not manager:
        raise click.UsageError("give --scheduler, --manager, or both")
    tls = _cluster_tls(tls_dir, "seed" if seed else "peer")
    link = _manager_link(manager, tls, scheduler_refresh_interval=scheduler_refresh_interval)
    urls = [_member_url(url, tls is not None, "--scheduler") for url in scheduler.split(",")] if scheduler else []
    # Members verify one another, so the upload server may face the network; without
    # certificates it stays on this machine unless told otherwise.
    upload_listen = upload_listen or (("0.0.0.0" if tls else "127.0.0.1"), 65002)
    _guard_exposure("the upload server", "--upload-listen", upload_listen, tls, insecure)
    _warn_if_mirror_exposed(listen)
    node = Node(_mirror_settings(**mirror), PeerSettings(
        schedulers=urls, upload_host=upload_listen[0], upload_port=upload_listen[1], seed=seed, idc=idc,
        location=location, host_id=_host_id(host_id, tls), upload_slots=upload_slots, upload_rate=upload_rate,
        peer_send_timeout=_wait(peer_send_timeout, mirror["read_timeout"]), tls=tls), manager=link)
    _serve(node.sites(listen), node.started, node.stopping)


def _member_url(url: str, tls: bool, flag: str) -> str:
    """A cluster member's address given to ``flag`` as a URL: a bare HOST:PORT is https with a
    cluster identity, which never talks plain HTTP, and http without one."""
    try:
        url = normalize_upstream(url) if "://" in url else f"{'https' if tls else 'http'}://{url.strip()}"
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None
    if tls and not url.startswith("https://"):
        raise click.BadParameter(f"{url}: with --tls-dir, {flag} is reached over https", param_hint=flag)
    return url


def _redis_url(_: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from damselfly.lib.kv import check_url

    try:
        return check_url(value) if value else None
    except ValueError as error:
        raise click.BadParameter(str(error), param=param) from None


@main.command(context_settings=SETTINGS_CONTEXT)
@click.option("--listen", type=LISTEN_ADDRESS, default="127.0.0.1:8002", show_default=True)
@log_level_option
@_with(tls_options)
@_with(scheduler_limit_options)
@manager_option
@click.option("--cluster", default=None, metavar="NAME",
              help="With --manager: the cluster to join (created with defaults if missing). Without it, the "
                   "manager places the scheduler by its address.")
@click.option("--redis", default=None, metavar="URL", callback=_redis_url,
              help="redis://HOST:PORT/DB shared with the manager and the cluster's other schedulers: preheat jobs, "
                   "and which hosts hold which blobs, kept across restarts. Without it, both live in this process.")
@config_option
def scheduler(listen: tuple[str, int], log_level: str, tls_dir: Path | None, insecure: bool, max_task_length: int,
              max_hosts: int, max_tasks: int, manager: str | None, cluster: str | None, redis: str | None) -> None:
    """Run a scheduler: hosts, tasks and peers in memory; ranks parents, hands out seed peers."""
    from damselfly.node import SchedulerNode

    configure_logging(log_level)
    tls = _cluster_tls(tls_dir, "scheduler")
    _guard_exposure("the scheduler", "--listen", listen, tls, insecure)
    if cluster and not manager:
        raise click.BadParameter("a cluster is joined through the manager: give --manager too", param_hint="--cluster")
    node = SchedulerNode(SchedulerSettings(max_task_length, max_hosts, max_tasks, redis), listen, tls,
                         _manager_link(manager, tls, cluster))
    _serve([node.site()], node.started, node.stopping)


@main.group()
def ca() -> None:
    """The cluster's certificate authority: `init` once, then `issue` a certificate for each host."""


@ca.command("init")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write ca.pem and ca-key.pem (created 0700; the key 0600).")
def ca_init(directory: Path) -> None:
    """Create the cluster CA."""
    from damselfly.lib.tls import init_ca

    with _ca_errors(directory):
        init_ca(directory)
    click.echo(f"wrote {directory / 'ca.pem'} and {directory / 'ca-key.pem'}")


@contextlib.contextmanager
def _ca_errors(written: Path) -> Iterator[None]:
    """A CA command's failures as one line: the library's reason, or the directory it could not write."""
    from damselfly.lib.tls import TLSError

    try:
        yield
    except TLSError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write into {written}: {exc.strerror}") from None


@ca.command("issue")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The CA directory of `damselfly ca init`.")
@click.option("--name", required=True, help="The host's name: its host id in the cluster.")
@click.option("--role", "roles", multiple=True, type=click.Choice(["peer", "seed", "scheduler", "manager"]),
              help="What the host may do [default: peer]; repeat for an all-in-one node (seed and scheduler).")
@click.option("--ip", "ips", multiple=True, help="An address the host is reached at (repeatable).")
@click.option("--dns", "dns", multiple=True, help="A DNS name the host is reached at (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write ca.pem, cert.pem and key.pem: the host's --tls-dir.")
def ca_issue(directory: Path, name: str, roles: tuple[str, ...], ips: tuple[str, ...], dns: tuple[str, ...],
             out: Path) -> None:
    """Issue a certificate for one host, signed by the cluster CA."""
    from damselfly.lib.tls import issue

    with _ca_errors(out):
        issue(directory, name, roles or ("peer",), out, ips, dns)
    click.echo(f"wrote {out / 'cert.pem'} for {name} ({'+'.join(roles or ('peer',))})")


@main.command("containerd-config")
@click.option("--mirror", required=True, help="URL of the Damselfly mirror, e.g. http://127.0.0.1:65001.")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="containerd's hosts directory (config_path, or ctr --hosts-dir).")
@click.option("--registry", "registries", multiple=True, metavar="NAME[=URL]",
              help="Registry to mirror; URL defaults to https://NAME. Repeatable.")
@click.option("--default", "default", is_flag=True, help="Also write _default/hosts.toml for every other registry.")
def containerd_config(mirror: str, directory: Path, registries: tuple[str, ...], default: bool) -> None:
    """Write hosts.toml files that send containerd's pulls through the mirror."""
    from damselfly.mirror.containerd import write_hosts_dir

    try:
        normalize_upstream(mirror)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--mirror") from None
    if not registries and not default:
        raise click.UsageError("name at least one --registry, or --default")
    try:
        written = write_hosts_dir(directory, mirror, list(registries), default)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--registry") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write into {directory}: {exc.strerror}") from None
    for path in written:
        click.echo(f"wrote {path}")


# The manager's command lives in its role; --config is added here, where the config file's reader is.
main.add_command(config_option(importlib.import_module("damselfly.manager.command").manager))
