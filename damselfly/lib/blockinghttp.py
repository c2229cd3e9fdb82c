"""Blocking HTTP: connections for worker threads that move blob bytes (piece and origin
transfers), and a small keep-alive session for the nydus commands; a short deadline to
connect and a longer one for every read; the proxy the environment names, for registries.

The nydus mount command and its FUSE server start once per container, many at once when a
cluster starts an image: the standard library's client costs them a fraction of the CPU
that a general-purpose client's imports, CA bundle and per-request machinery do.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Union
from urllib.parse import unquote, urljoin, urlsplit

from damselfly.lib.netaddr import may_lead_to

REDIRECTS = (301, 302, 303, 307, 308)
IDEMPOTENT = ("GET", "HEAD")  # sent again on a new connection when a kept-alive one was dead
MAX_REDIRECTS = 10
IDLE_PER_ORIGIN = 8
DISCARD_LIMIT = 64 * 1024  # of a body read only so that its connection is kept
# A connection idle longer than this is closed, not reused: servers drop idle ones after
# 5 to 90 s, and one dropped without a word (a TLS connection without close_notify, say)
# fails in ways that look like any other error.
IDLE_SECONDS = 15.0
CHUNK = 1 << 20

# What a request sends: nothing, bytes, or a function giving a fresh iterator of bytes (a
# request that is sent again, after a token challenge or on a fresh connection, reads it again).
Body = Union[bytes, Callable[[], Iterable[bytes]], None]


class ProxyRefused(OSError):
    """The proxy refused to open a CONNECT tunnel; ``status`` is its answer (407 or 401 when
    it wants credentials)."""

    def __init__(self, status: int, proxy: str, url: str) -> None:
        super().__init__(f"the proxy {without_credentials(proxy)} refused a tunnel to {origin_of(url)}: {status}")
        self.status = status
        self.proxy = proxy  # as the environment names it, credentials and all: show without_credentials(proxy)
        self.url = url


def tunnel_refusal(error: BaseException, route: "Route") -> ProxyRefused | None:
    """The refusal behind ``error`` when it is http.client's report of a failed CONNECT on
    ``route`` (it has no type of its own: "Tunnel connection failed: <status> <reason>")."""
    words = str(error).split()
    if (route.proxy is None or route.forwarded or not isinstance(error, OSError)
            or words[:3] != ["Tunnel", "connection", "failed:"] or len(words) < 4 or not words[3].isdigit()):
        return None
    return ProxyRefused(int(words[3]), route.proxy, route.url)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The system's verifying context, built once per process (reading the CA bundle costs
    tens of milliseconds); one SSLContext may serve every thread."""
    return ssl.create_default_context()


class _Deadlines:
    """Connect (and any TLS handshake) within ``connect_timeout``; then each read may wait ``read_timeout``.

    Also on the reconnect http.client makes by itself when a kept-alive connection was closed.
    """

    connect_timeout: float
    read_timeout: float
    timeout: float | None
    sock: object

    def connect(self) -> None:
        self.timeout = self.connect_timeout
        super().connect()  # type: ignore[misc]
        self.sock.settimeout(self.read_timeout)  # type: ignore[attr-defined]


class TimedHTTPConnection(_Deadlines, http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, connect_timeout: float, read_timeout: float) -> None:
        super().__init__(host, port, timeout=connect_timeout)
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout


class TimedHTTPSConnection(_Deadlines, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, connect_timeout: float, read_timeout: float,
                 context: ssl.SSLContext | None = None) -> None:
        super().__init__(host, port, timeout=connect_timeout, context=context or tls_context())
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout


def connection_for(url: str, connect_timeout: float, read_timeout: float,
                   context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    """A connection (not yet opened) to the host of an http or https ``url``; ``context``
    replaces the system's trust for https (a cluster member's context, between peers)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return TimedHTTPSConnection(parts.hostname or "", parts.port, connect_timeout, read_timeout, context)
    return TimedHTTPConnection(parts.hostname or "", parts.port, connect_timeout, read_timeout)


def request_target(url: str) -> str:
    """The path and query of ``url``, as the request line wants them."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
NOT_A_PROXY_URL = "not a proxy URL http://[user:password@]host[:port] (percent-encode / # ? @ in a password)"


def proxy_for(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy that the environment names for ``url``, as curl and most clients read it:
    ``http_proxy`` or ``https_proxy`` by the URL's scheme, else ``all_proxy`` (lower case
    first, then upper case), unless ``no_proxy`` lists the URL's host: ``*``, a name (its
    subdomains too, with or without a leading dot), an address or a network.

    Not urllib.request's getproxies_environment and proxy_bypass_environment: importing
    that module costs every lazy mount about 12 ms, and its no_proxy knows no networks."""
    parts = urlsplit(url)
    proxy = environment_variable(environ, f"{parts.scheme}_proxy") or environment_variable(environ, "all_proxy")
    if not proxy or _exempt(parts.hostname or "", environment_variable(environ, "no_proxy")):
        return None
    return _with_scheme(proxy)


def environment_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """The proxies the environment names that some URL would take, by lower-case variable,
    read as proxy_for reads them: ``all_proxy`` only when the http or https one is unset."""
    named = {name: _with_scheme(value) for name in PROXY_VARIABLES if (value := environment_variable(environ, name))}
    if "http_proxy" in named and "https_proxy" in named:
        named.pop("all_proxy", None)
    return named


def proxy_problem(proxy: str) -> str | None:
    """Why ``proxy`` cannot be used (never echoing it: a password may be in it), or None."""
    parts = urlsplit(proxy)
    if parts.scheme != "http":
        return f"only http:// proxies are supported, not {parts.scheme}:// (https registries are reached " \
               "through them with CONNECT)"
    try:
        parts.port  # noqa: B018 - the check itself: a port that is no number raises ValueError
    except ValueError:
        return NOT_A_PROXY_URL
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        return NOT_A_PROXY_URL
    return None


def environment_variable(environ: Mapping[str, str], name: str) -> str:
    """A proxy variable as clients read it: lower case first, then upper case; "" if unset."""
    return environ.get(name) or environ.get(name.upper()) or ""


def _with_scheme(proxy: str) -> str:
    return proxy if "://" in proxy else f"http://{proxy}"


def _exempt(host: str, no_proxy: str) -> bool:
    import ipaddress  # only where no_proxy is set: every lazy mount imports this module

    host = host.lower()
    for entry in (item.strip().lower() for item in no_proxy.split(",")):
        if entry == "*":
            return True
        if entry.startswith("["):  # [v6 address] or [v6 address]:port
            entry = entry[1:].split("]", 1)[0]
        elif entry.count(":") == 1:  # name:port; the port is not compared
            entry = entry.split(":", 1)[0]
        entry = entry.lstrip(".")
        if not entry:
            continue
        try:
            if ipaddress.ip_address(host) in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            pass
        if host == entry or host.endswith("." + entry):
            return True
    return False


def proxy_authorization(proxy: str) -> dict[str, str]:
    """The Proxy-Authorization header for the user and password in ``proxy``, if it has them."""
    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(credentials).decode()}


def without_credentials(proxy: str) -> str:
    """``proxy`` without its user and password (they travel in Proxy-Authorization)."""
    parts = urlsplit(proxy)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@dataclass(frozen=True)
class Route:
    """How a request for ``url`` travels: straight to its host, or through ``proxy`` (see
    proxy_for): an http URL as an absolute request that the proxy makes, an https one
    through a CONNECT tunnel."""

    url: str
    proxy: str | None = None

    @property
    def forwarded(self) -> bool:
        """Sent to the proxy as an absolute request (an http URL), not through a tunnel."""
        return self.proxy is not None and urlsplit(self.url).scheme == "http"

    def target(self) -> str:
        """What the request line names."""
        return self.url if self.forwarded else request_target(self.url)

    def headers(self) -> dict[str, str]:
        """Headers the route adds to the request."""
        return proxy_authorization(self.proxy) if self.forwarded and self.proxy else {}

    def connection(self, connect_timeout: float, read_timeout: float) -> http.client.HTTPConnection:
        """A new connection (not yet opened). Raises http.client.HTTPException for a proxy
        that is not an http:// URL (without echoing it: a password may be in it)."""
        if self.proxy is None:
            return connection_for(self.url, connect_timeout, read_timeout)
        problem = proxy_problem(self.proxy)
        if problem:
            raise http.client.HTTPException(f"the proxy for {origin_of(self.url)}: {problem}")
        if not self.forwarded:
            via, parts = urlsplit(self.proxy), urlsplit(self.url)
            connection = TimedHTTPSConnection(via.hostname or "", via.port or 80, connect_timeout, read_timeout)
            connection.set_tunnel(parts.hostname or "", parts.port or 443, headers=proxy_authorization(self.proxy))
            return connection
        return connection_for(self.proxy, connect_timeout, read_timeout)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class RedirectRefused(http.client.HTTPException):
    """A redirect this client will not follow; the message says where it led."""


def next_hop(url: str, location: str) -> tuple[str, bool]:
    """Where a redirect from ``url`` leads, and whether the caller's ``Authorization`` may go
    there: only to the same origin (storage with signed URLs refuses it).

    An https upstream may not send us to plain http (or another scheme): a registry that
    a client may name could otherwise make the mirror fetch, and pass back, any service
    that plain HTTP reaches (RedirectRefused)."""
    target = urljoin(url, location)
    if not may_lead_to(url, target):
        raise RedirectRefused(f"{url} redirected to {without_credentials(target)}: refused, not https")
    return target, origin_of(target) == origin_of(url)


# What a request that a redirect turns into a GET no longer sends.
BODY_HEADERS = ("Content-Length", "Content-Type", "Transfer-Encoding")


@dataclass(frozen=True)
class Redirect:
    """The request a redirect leads to: ``method`` on ``url``, without the ``dropped``
    headers, and without the body when ``drops_body``."""

    method: str
    url: str
    dropped: tuple[str, ...]
    drops_body: bool


def follow_redirect(method: str, url: str, status: int, location: str | None) -> Redirect | None:
    """The one redirect policy of every registry request: where an answer of ``status``
    with ``location`` to ``method`` on ``url`` sends it next, or None when it is the answer.

    The target is next_hop's (RedirectRefused for a downgrade); credentials stay behind on
    another origin; a 303, or a 301 or 302 to a POST, becomes a GET without the body, as
    browsers and curl do."""
    if status not in REDIRECTS or not location:
        return None
    target, same_origin = next_hop(url, location)
    dropped = () if same_origin else ("Authorization",)
    if method != "HEAD" and (status == 303 or (status in (301, 302) and method == "POST")):
        return Redirect("GET", target, dropped + BODY_HEADERS, drops_body=True)
    return Redirect(method, target, dropped, drops_body=False)


class Response:
    """An answer whose body is read on demand. Read to its end, its connection goes back to
    the session for the next request; closed before that, the connection is closed."""

    def __init__(self, session: "Session", origin: str, connection: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse, url: str, sock: socket.socket | None = None) -> None:
        self._session, self._origin = session, origin
        self._connection: http.client.HTTPConnection | None = connection
        self._sock = sock
        self.raw, self.url = raw, url
        self._content: bytes | None = None
        self._aborted = False

    @property
    def status_code(self) -> int:
        return self.raw.status

    @property
    def headers(self) -> http.client.HTTPMessage:
        return self.raw.headers

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = self.raw.read()
            self.close()
        return self._content

    def read(self) -> bytes:
        return self.content

    def json(self) -> Any:
        return json.loads(self.content)

    def iter_bytes(self, size: int = CHUNK) -> Iterator[bytes]:
        """The body in parts of at most ``size`` bytes, each as soon as it arrives; a body
        cut short of its Content-Length raises IncompleteRead (read1 would just end)."""
        while part := self.raw.read1(size):
            yield part
        if self.raw.length:
            self.close()
            raise http.client.IncompleteRead(b"", self.raw.length)
        self.close()

    def discard(self) -> None:
        """Done with a short answer (a redirect, a challenge): its body is read, so that the
        connection is kept, up to DISCARD_LIMIT; a longer one closes the connection."""
        self.raw.read(DISCARD_LIMIT)
        self.close()

    def abort(self) -> None:
        """From any thread: make a blocked read of the body fail at once (the connection is
        then not kept)."""
        self._aborted = True
        connection = self._connection
        # The connection's socket, or, once it handed the socket to this answer alone (a
        # server that closes after it), the one it had: a read blocked on it must end.
        sock = connection.sock if connection is not None and connection.sock is not None else self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if not self.raw.isclosed() and self.raw.length == 0:
            self.raw.read()  # all read (or a HEAD): http.client only marks the body done on a read
        # Kept only when its whole body was read: a body cut short also leaves the response closed.
        if self.raw.isclosed() and not self.raw.will_close and self.raw.length in (0, None) and not self._aborted:
            self._session.release(self._origin, connection)
        else:
            self.raw.close()
            connection.close()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class Session:
    """Kept-alive connections per origin, shared by threads; follows redirects, and drops
    ``Authorization`` when one leads to another origin (storage with signed URLs refuses it).
    With ``trust_env``, goes through the proxy the environment names (see proxy_for): an
    http URL as an absolute request to it, an https one through a CONNECT tunnel."""

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 headers: dict[str, str] | None = None, trust_env: bool = True,
                 idle_seconds: float = IDLE_SECONDS) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.headers = dict(headers or {})
        self.trust_env = trust_env
        self.idle_seconds = idle_seconds
        self._idle: dict[str, list[tuple[http.client.HTTPConnection, float]]] = {}  # with when it went idle
        self._lock = threading.Lock()

    def request(self, method: str, url: str, headers: dict[str, str] | None = None, body: Body = None) -> Response:
        """Raises OSError (TimeoutError and ProxyRefused included) or http.client.HTTPException
        when no answer came, or the request could not be made (a malformed URL or header, say)."""
        headers = {**self.headers, **(headers or {})}
        for _ in range(MAX_REDIRECTS + 1):
            try:
                response = self._send(method, url, headers, body)
            except ValueError as error:  # http.client's word for a URL or header it cannot send
                raise http.client.HTTPException(f"cannot send {method} {url}: {error}") from None
            redirect = follow_redirect(method, url, response.status_code, response.headers.get("Location"))
            if redirect is None:
                return response
            response.discard()
            for name in redirect.dropped:
                headers.pop(name, None)
            method, url = redirect.method, redirect.url
            body = None if redirect.drops_body else body
        raise http.client.HTTPException(f"more than {MAX_REDIRECTS} redirects, the last to {url}")

    def _send(self, method: str, url: str, headers: dict[str, str], body: Body) -> Response:
        """One request. Only GET and HEAD go on a kept-alive connection, and are sent once
        more on a new one if the server had closed it: an upload is never sent twice."""
        origin = origin_of(url)
        route = Route(url, proxy_for(url, os.environ) if self.trust_env else None)
        target, headers = route.target(), {**headers, **route.headers()}
        connection, reused = self._acquire(origin, route, pooled=method in IDEMPOTENT)
        try:
            return self._exchange(connection, route, origin, method, target, headers, body)
        except (OSError, http.client.HTTPException) as error:  # a dead kept-alive connection, in any guise
            if not reused or isinstance(error, (TimeoutError, ProxyRefused)):
                raise
        fresh = route.connection(self.connect_timeout, self.read_timeout)
        return self._exchange(fresh, route, origin, method, target, headers, body)

    def _exchange(self, connection: http.client.HTTPConnection, route: Route, origin: str, method: str, target: str,
                  headers: dict[str, str], body: Body) -> Response:
        try:
            connection.request(method, target, body=body() if callable(body) else body, headers=headers)
            sock = connection.sock  # the answer's socket: getresponse forgets it when the server will close
            return Response(self, origin, connection, connection.getresponse(), route.url, sock)
        except BaseException as error:
            connection.close()
            refused = tunnel_refusal(error, route)
            if refused is not None:
                raise refused from None
            raise

    def _acquire(self, origin: str, route: Route, pooled: bool) -> tuple[http.client.HTTPConnection, bool]:
        """A kept-alive connection to ``origin`` if ``pooled`` and one is idle (True), else a new one."""
        stale, kept = [], None
        if pooled:
            with self._lock:
                idle = self._idle.get(origin, [])
                while idle and kept is None:
                    connection, since = idle.pop()
                    if time.monotonic() - since < self.idle_seconds:
                        kept = connection
                    else:
                        stale.append(connection)
        for connection in stale:
            connection.close()
        if kept is not None:
            return kept, True
        return route.connection(self.connect_timeout, self.read_timeout), False

    def release(self, origin: str, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < IDLE_PER_ORIGIN:
                idle.append((connection, time.monotonic()))
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            connections = [c for idle in self._idle.values() for c, _ in idle]
            self._idle.clear()
        for connection in connections:
            connection.close()
