"""A scheduler's or daemon's membership in its manager: register, keep alive, and take the
cluster's configuration and schedulers from every answer (see docs/manager.md).

It lives below the roles so that the scheduler and the daemon share it without importing
each other or the manager. Registration is retried until the manager answers; a
keepalive answered 404 (the manager lost the record: a new database) registers again.
While the manager is down the member keeps the configuration and the schedulers of the
last answer, and says so once, not at every try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from damselfly.core.dynconfig import ClusterConfig, describe_changes, schedulers_to_use
from damselfly.lib.serve import error_of
from damselfly.lib.tls import ClusterTLS, role_hostname

log = logging.getLogger(__name__)
API = "/api/v1/components"
RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # registration retries back off from RETRY_FIRST up to RETRY_MAX seconds
MIN_INTERVAL, MAX_INTERVAL = 0.1, 60.0  # a keepalive interval the manager tells is kept within these
MAX_ANSWER = 1 << 20


class ManagerRefused(Exception):
    """The manager answered, and not with what was asked: the message says what it said."""


@dataclass(frozen=True)
class Membership:
    """What a component tells the manager about itself when it registers."""

    kind: str  # scheduler, seed-peer or peer
    host_id: str
    url: str  # a scheduler's API, a peer's upload server
    idc: str = ""
    location: str = ""
    cluster: str | None = None  # join this cluster (a scheduler's --cluster)
    scheduler_url: str | None = None  # join the cluster of this scheduler (a daemon's --scheduler)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind, "host_id": self.host_id, "url": self.url}
        for key in ("idc", "location", "cluster", "scheduler_url"):
            if value := getattr(self, key):
                body[key] = value
        return body


def _schedulers(document: dict[str, Any]) -> list[str]:
    urls = document.get("schedulers", [])
    if not isinstance(urls, list) or not all(isinstance(url, str) and url.startswith(("http://", "https://"))
                                             for url in urls):
        raise ValueError("schedulers: want a list of http(s) URLs")
    return urls


class ManagerClient:
    """Keeps one component registered with the manager at ``manager_url``.

    ``on_config`` gets the cluster's configuration from the first answer on, and again
    whenever it changes. ``on_schedulers``, for a daemon without ``--scheduler``, gets the
    cluster's active schedulers when they should replace ``current_schedulers()`` (see
    damselfly.core.dynconfig.schedulers_to_use); with ``https_only`` (a member with a
    cluster identity) it never gets a scheduler reached over plain HTTP. ``counters``
    gives the bytes uploaded to peers and served to clients, sent with each keepalive.
    """

    def __init__(self, manager_url: str, membership: Membership, *, tls: ClusterTLS | None,
                 on_config: Callable[[ClusterConfig], None],
                 on_schedulers: Callable[[list[str]], None] | None = None,
                 current_schedulers: Callable[[], list[str]] = list,
                 refresh_interval: float = 60.0, https_only: bool = False,
                 counters: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 timeout: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = manager_url.rstrip("/")
        self.membership = membership
        self.on_config = on_config
        self.on_schedulers = on_schedulers
        self.current_schedulers = current_schedulers
        self.refresh_interval = refresh_interval
        self.https_only = https_only
        self.counters = counters
        self.timeout = timeout
        self.clock = clock
        self._tls: dict[str, Any] = ({"ssl": tls.client_context("manager"), "server_hostname": role_hostname("manager")}
                                     if tls is not None and self.url.startswith("https:") else {})
        self.component_id: int | None = None
        self.cluster_id: int | None = None
        self.interval = RETRY_MAX
        self.config: ClusterConfig | None = None
        self.registered = asyncio.Event()  # set once the manager has answered a registration
        self._schedulers_changed_at = -math.inf
        self._unreachable: str | None = None  # why the manager did not answer, while it does not
        self._empty_list_told = False
        self._plain_told: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"manager membership ({self.membership.kind})")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    # -- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        retry = RETRY_FIRST
        while True:
            try:
                if self.component_id is None:
                    await self._register()
                    retry = RETRY_FIRST
                else:
                    await asyncio.sleep(self.interval)
                    await self._keepalive()
            except (aiohttp.ClientError, TimeoutError, ValueError, ManagerRefused) as error:
                self._lost(error)
                if self.component_id is None:
                    await asyncio.sleep(retry)
                    retry = min(RETRY_MAX, retry * 2)

    async def _register(self) -> None:
        document = await self._post(API, self.membership.to_json(), register=True)
        component_id, cluster_id, interval = document.get("id"), document.get("cluster_id"), \
            document.get("keepalive_interval")
        if not isinstance(component_id, int) or not isinstance(interval, (int, float)):
            raise ValueError("the registration answer has no id or keepalive_interval")
        self.component_id = component_id
        self.cluster_id = cluster_id if isinstance(cluster_id, int) else None
        self.interval = min(MAX_INTERVAL, max(MIN_INTERVAL, float(interval)))
        self._answered()
        log.info("registered with the manager at %s as %s %s (component %d, cluster %s); keepalive every %g s",
                 self.url, self.membership.kind, self.membership.host_id, component_id, self.cluster_id,
                 self.interval)
        self._take(document)
        self.registered.set()

    async def _keepalive(self) -> None:
        uploaded, served = self.counters()
        document = await self._post(f"{API}/{self.component_id}/keepalive",
                                    {"uploaded_bytes": uploaded, "served_bytes": served})
        if document is None:  # 404: the manager no longer knows this id
            log.info("the manager at %s does not know component %s any more: registering again", self.url,
                     self.component_id)
            self.component_id = None
            return
        self._answered()
        self._take(document)

    async def _post(self, path: str, body: dict[str, Any], register: bool = False) -> Any:
        """The JSON object the manager answered; None for a keepalive's 404; ManagerRefused
        for any other answer but 200."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        async with self._session.post(f"{self.url}{path}", json=body, **self._tls) as response:
            text = (await response.content.read(MAX_ANSWER)).decode(errors="replace")
            if response.status == 404 and not register:
                return None
            if response.status != 200:
                raise ManagerRefused(f"answered {response.status}: {error_of(text)}")
        document = _json_object(text)
        return document

    # -- what the answers say -----------------------------------------------------------

    def _take(self, document: dict[str, Any]) -> None:
        """Apply an answer's configuration and schedulers; a part that makes no sense is
        logged and the last good one kept."""
        try:
            config = ClusterConfig.from_json(document.get("config"))
        except ValueError as error:
            log.warning("the manager sent a configuration this member cannot use (%s): keeping the last one", error)
        else:
            if config != self.config:
                log.info("cluster %s configuration for this %s: %s", self.cluster_id, self.membership.kind,
                         ", ".join(describe_changes(self.config, config)))
                self.config = config
                try:
                    self.on_config(config)
                except Exception:  # noqa: BLE001 - applying must not end the membership
                    log.exception("could not apply the cluster configuration")
        if self.on_schedulers is not None:
            try:
                self._take_schedulers(_schedulers(document))
            except ValueError as error:
                log.warning("the manager sent a scheduler list this member cannot use (%s): keeping the last one",
                            error)

    def _take_schedulers(self, answered: list[str]) -> None:
        assert self.on_schedulers is not None
        if self.https_only:  # a member of a TLS cluster talks to no scheduler in clear
            plain = {url for url in answered if not url.startswith("https://")}
            if plain - self._plain_told:
                log.warning("ignoring schedulers the manager lists over plain HTTP (this member speaks TLS): %s",
                            ", ".join(sorted(plain)))
            self._plain_told = plain
            answered = [url for url in answered if url not in plain]
        current = self.current_schedulers()
        if not answered:
            if not self._empty_list_told:
                if current:  # schedulers between keepalives, or a manager that just restarted
                    log.info("the manager lists no active scheduler in cluster %s: keeping %s from the last answer",
                             self.cluster_id, _schedulers_phrase(current))
                else:
                    log.warning("the manager lists no active scheduler in cluster %s yet: blobs come from the "
                                "registry until one registers", self.cluster_id)
                self._empty_list_told = True
            return
        self._empty_list_told = False
        now = self.clock()
        chosen = schedulers_to_use(current, answered, now - self._schedulers_changed_at, self.refresh_interval)
        if chosen is not None:
            self._schedulers_changed_at = now
            self.on_schedulers(chosen)

    def _answered(self) -> None:
        if self._unreachable is not None:
            log.info("the manager at %s answers again", self.url)
            self._unreachable = None

    def _lost(self, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if self._unreachable is None:
            if self.component_id is None:
                log.warning("cannot register with the manager at %s (%s): trying again every few seconds%s",
                            self.url, reason, self._keeping())
            else:
                log.warning("manager unreachable at %s (%s)%s", self.url, reason, self._keeping())
        self._unreachable = reason

    def _keeping(self) -> str:
        kept = []
        if self.on_schedulers is not None and (current := self.current_schedulers()):
            kept.append(_schedulers_phrase(current))
        if self.config is not None:
            kept.append("the cluster configuration")
        return f", keeping {' and '.join(kept)} from the last answer" if kept else ""


def _schedulers_phrase(urls: list[str]) -> str:
    return "1 scheduler" if len(urls) == 1 else f"{len(urls)} schedulers"


def _json_object(text: str) -> dict[str, Any]:
    import json

    try:
        document = json.loads(text)
    except ValueError:
        raise ValueError("the manager's answer is not JSON") from None
    if not isinstance(document, dict):
        raise ValueError("the manager's answer is not a JSON object")
    return document
