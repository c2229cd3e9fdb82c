"""The typed settings of the server commands (`run`, `daemon`, `scheduler`), their
defaults, and the one naming rule of a setting.

A setting has three names, all from its flag: ``--some-flag`` is the config file key
``some_flag`` (also the name click gives the option's value) and the variable
``DAMSELFLY_SOME_FLAG``. damselfly.config applies the rule to click; the roles receive
the dataclasses below and never see flags. (The nydus commands take flags only, no
variables or config file: see docs/configuration.md.)

This module sits below the roles (proxy, p2p, scheduler, nydus) and imports none of them,
so each role and the CLI can import it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from damselfly.lib.tls import ClusterTLS

ENV_PREFIX = "DAMSELFLY"


def setting_key(flag: str) -> str:
    """``--data-dir`` (or a file's ``data-dir``) -> ``data_dir``: the config key and the option's name."""
    return flag.removeprefix("--").replace("-", "_")


def setting_variable(key: str) -> str:
    """``data_dir`` -> ``DAMSELFLY_DATA_DIR``: the variable click's ``auto_envvar_prefix`` reads for a key."""
    return f"{ENV_PREFIX}_{key.upper()}"


def default_data_dir() -> Path:
    """Root gets the system's place; anyone else (a laptop) their XDG data directory."""
    if os.geteuid() == 0:
        return Path("/var/lib/damselfly")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "damselfly"


def advertised_url(host: str, port: int, https: bool) -> str:
    """The URL other hosts reach a server at that listens on ``host``: for an unspecified
    address (all interfaces), the address of this host's name."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostbyname(socket.gethostname())
    scheme = "https" if https else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


GiB = 1024**3
CACHE_QUOTA = 50 * GiB
CACHE_HIGH_WATERMARK = 0.9
CACHE_LOW_WATERMARK = 0.75
CONNECT_TIMEOUT = 10.0
# --read-timeout: one number for every wait on a silent other side, each its own setting below.
READ_TIMEOUT = 60.0
# How long the registry's yes to a caller's credentials for a protected blob is trusted.
ACCESS_TTL = 60.0
# How long a tag's last resolution may stand in for a registry that fails (--stale-tag-ttl).
STALE_TAG_TTL = 24 * 3600.0


@dataclass
class MirrorSettings:
    """The mirror of `damselfly run` and `daemon`: its store, its upstreams and how long it waits on each side."""

    data_dir: Path
    registries: dict[str, str] = field(default_factory=dict)  # registry name -> upstream URL
    default_registry: str | None = None
    cache_quota: int = CACHE_QUOTA
    cache_high_watermark: float = CACHE_HIGH_WATERMARK
    cache_low_watermark: float = CACHE_LOW_WATERMARK
    connect_timeout: float = CONNECT_TIMEOUT
    # An upstream registry that sends nothing of its answer, or takes nothing of a pushed
    # body, for this long is given up on (502/504).
    upstream_read_timeout: float = READ_TIMEOUT
    # A download (from peers or the registry) that makes no progress for this long fails
    # its readers; P2P has its own faster fallbacks inside this.
    download_stall_timeout: float = READ_TIMEOUT
    # A client that pauses this long while sending a request body gets 408.
    client_body_timeout: float = READ_TIMEOUT
    # A client that accepts nothing of one send (4 MiB, 32 KiB of a cached blob) for this long is cut off.
    client_send_timeout: float = READ_TIMEOUT
    access_ttl: float = ACCESS_TTL
    stale_tag_ttl: float = STALE_TAG_TTL


UPLOAD_SLOTS = 16


@dataclass
class PeerSettings:
    """The peer side of `damselfly run` and `daemon`: the upload server and how schedulers see this host."""

    schedulers: list[str]
    upload_host: str
    upload_port: int
    seed: bool = False
    idc: str = ""
    location: str = ""
    host_id: str = ""
    upload_slots: int = UPLOAD_SLOTS
    upload_rate: int | None = None  # bytes per second, None for no cap
    # A peer that accepts nothing of one piece send for this long is cut off, freeing the slot.
    peer_send_timeout: float = READ_TIMEOUT
    tls: ClusterTLS | None = None  # the cluster identity: upload server and scheduler calls over mutual TLS

    @property
    def advertised_url(self) -> str:
        return advertised_url(self.upload_host, self.upload_port, self.tls is not None)

    @property
    def resolved_host_id(self) -> str:
        """With a cluster identity, the name in the certificate: the scheduler admits no other."""
        if self.tls is not None:
            return self.tls.identity.name
        return self.host_id or f"{socket.gethostname()}:{self.upload_port}"


MAX_TASK_LENGTH = 1 << 40  # 1 TiB: 16384 pieces of 64 MiB
MAX_HOSTS = 10_000
MAX_TASKS = 100_000


@dataclass(frozen=True)
class SchedulerSettings:
    """The limits of a scheduler (`damselfly scheduler`, and the one inside `run`): what one process keeps."""

    max_task_length: int = MAX_TASK_LENGTH  # longer registers get 413
    max_hosts: int = MAX_HOSTS  # more get 429
    max_tasks: int = MAX_TASKS  # past it, the oldest task without peers is forgotten
    # redis://HOST:PORT/DB shared with the manager and the other schedulers: preheat jobs, and
    # which hosts hold which blobs, across restarts. None: in this process only.
    redis: str | None = None



SCHEDULER_REFRESH_INTERVAL = 60.0


@dataclass(frozen=True)
class ManagerLink:
    """How a scheduler or daemon joins its manager (``--manager``): where it is, which
    cluster to ask for, and how often a daemon without ``--scheduler`` may change its
    schedulers to the manager's latest list."""

    url: str
    cluster: str | None = None
    scheduler_refresh_interval: float = SCHEDULER_REFRESH_INTERVAL


MANAGER_LISTEN = ("127.0.0.1", 8080)
MANAGER_KEEPALIVE_INTERVAL = 5.0
MANAGER_INACTIVE_AFTER = 15.0
MANAGER_SESSION_TTL = 12 * 3600.0
MANAGER_SIGNIN_FAILURES = 5  # a minute, per name and per address, before 429
MANAGER_MAX_BODY = 1 << 20
MANAGER_SCHEDULER_TIMEOUT = 5.0


@dataclass(frozen=True)
class ManagerSettings:
    """The manager (`damselfly manager`, and the one `run` embeds): where it keeps its state,
    how it admits callers, and how fast it declares a component gone."""

    data_dir: Path
    listen: tuple[str, int] = MANAGER_LISTEN
    database: str | None = None  # sqlite:///PATH or postgresql://...; None: manager.db in data_dir
    tls: ClusterTLS | None = None  # HTTPS, and components prove membership with their certificates
    root_password: str | None = None  # the first start's root password; None: a random one, logged once
    keepalive_interval: float = MANAGER_KEEPALIVE_INTERVAL  # told to components at registration
    inactive_after: float = MANAGER_INACTIVE_AFTER  # without a keepalive for this long, a component is inactive
    session_ttl: float = MANAGER_SESSION_TTL  # how long a sign-in's token lasts
    signin_failures: int = MANAGER_SIGNIN_FAILURES
    max_body: int = MANAGER_MAX_BODY  # larger request bodies get 413
    scheduler_timeout: float = MANAGER_SCHEDULER_TIMEOUT  # a scheduler asked about a task answers within this
    redis: str | None = None  # where preheat jobs are queued for the schedulers; None: in this process only
    # registry name -> upstream URL: how the manager reaches a registry it resolves an image at
    # (plain http only to these and to loopback)
    registries: dict[str, str] = field(default_factory=dict)
