"""The mount service: one long-running process that makes and takes down lazy mounts.

``damselfly nydus mount`` is a Python start on every container start: about 100 ms of
interpreter and imports before the mount and 20-30 ms of exit after it, on top of the
mount itself. The service (what nydus calls its shared daemon) has its modules loaded
once and forks each mount's FUSE server from itself, so a mount costs what mounting
costs: the bootstrap, the FUSE server coming up, the loop devices and EROFS.

It speaks HTTP/1.1 with JSON bodies on a Unix socket, one request at a time (a mount
forks, and a process with a single thread forks safely)::

    POST /mount   {"ref", "mountpoint", and optionally "cache_dir", "cache_quota" (bytes, or a size such
                  as "10GiB"), "mirror", "plain_http", "prefetch"}
                  -> 200 with the mount's state (the FUSE server's pid and log, the loop devices)
    POST /umount  {"mountpoint"} -> 200 with the mount's fetch statistics
    GET  /healthy -> 200 "ok"

A request it cannot use answers 400 (408 when its body does not come), a mount or umount
that could not be done 409, anything else 500, each with ``{"error": "<one line>"}``.
SIGTERM and SIGINT stop it between requests, never in the middle of a mount. Mounts
outlive the service, as those the command makes do, and ``damselfly nydus umount`` takes
down either kind.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import signal
import socket
import socketserver
import stat
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from damselfly.lib.health import HEALTHY_PATH, HEALTHY_TEXT
from damselfly.core.oci import ImageRef
from damselfly.nydus.layout import FormatError
from damselfly.nydus.mount import (DEFAULT_CACHE_QUOTA, MountError, MountOptions, default_cache_dir, mount,
                                   parse_cache_quota, state_dir, umount)
from damselfly.registry.blocking import RegistryError

log = logging.getLogger("damselfly.nydus.service")

REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request
MAX_BODY = 64 * 1024
CLIENT_TIMEOUT = 120.0  # a mount waits up to 30 s for its FUSE server, and the bootstrap may be slow


def default_socket() -> Path:
    return state_dir() / "service.sock"


class ServiceError(RuntimeError):
    """The service could not be reached, or refused the request (its one-line reason)."""


class BadRequest(ValueError):
    """A request the service cannot use: answered with ``status`` and the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


MOUNT_FIELDS = {"ref", "mountpoint", "cache_dir", "cache_quota", "mirror", "plain_http", "prefetch"}
UMOUNT_FIELDS = {"mountpoint"}


def _field(body: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    """``body[name]``, checked to be a ``kind``; absent or null is ``default`` (required when none)."""
    value = body.get(name)
    if value is None:
        if default is ...:
            raise BadRequest(f"{name!r} is missing")
        return default
    if not isinstance(value, kind):
        raise BadRequest(f"{name!r} must be a {kind.__name__}")
    return value


def _path(body: dict[str, Any], name: str, default: Path | None = None) -> Path:
    """An absolute path (required without ``default``): a relative one would be taken from
    the service's working directory."""
    text = _field(body, name, str, ... if default is None else str(default))
    try:
        text.encode()
    except UnicodeEncodeError:
        raise BadRequest(f"{name!r} is not a valid path") from None
    if "\0" in text or not Path(text).is_absolute():
        raise BadRequest(f"{name!r} must be an absolute path")
    return Path(text)


def _quota(body: dict[str, Any]) -> int:
    """``cache_quota``: a number of bytes or a size such as "10GiB" (a bool is neither)."""
    value = body.get("cache_quota")
    if value is None:
        return DEFAULT_CACHE_QUOTA
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadRequest("'cache_quota' must be a number of bytes or a size such as \"10GiB\"")
    try:
        return parse_cache_quota(value)
    except ValueError as error:
        raise BadRequest(str(error)) from None


def _only(body: dict[str, Any], known: set[str]) -> None:
    """A misspelt option must not quietly fall back to its default (plain_http, say)."""
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}; known: {', '.join(sorted(known))}")


def _mount(body: dict[str, Any]) -> dict[str, Any]:
    _only(body, MOUNT_FIELDS)
    try:
        ref = ImageRef.parse(_field(body, "ref", str))
    except ValueError as error:
        raise BadRequest(str(error)) from None
    state = mount(ref, _path(body, "mountpoint"), MountOptions(
        _path(body, "cache_dir", default_cache_dir()), _field(body, "mirror", str, None),
        _field(body, "plain_http", bool, False), _field(body, "prefetch", bool, False), _quota(body)))
    return asdict(state)


def _umount(body: dict[str, Any]) -> dict[str, Any]:
    _only(body, UMOUNT_FIELDS)
    return umount(_path(body, "mountpoint"))


ROUTES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"/mount": _mount, "/umount": _umount}


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "damselfly-nydus"
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug(format, *args)

    def do_GET(self) -> None:
        if self.path == HEALTHY_PATH:
            self._reply(200, HEALTHY_TEXT)
        else:
            self._reply(404, {"error": f"no such endpoint: GET {self.path}"})

    def do_POST(self) -> None:
        action = ROUTES.get(self.path)
        if action is None:
            self._reply(404, {"error": f"no such endpoint: POST {self.path}"})
            return
        try:
            result = action(self._body())
        except BadRequest as error:
            self._reply(error.status, {"error": str(error)})
        except (MountError, RegistryError, FormatError, OSError) as error:
            log.warning("%s failed: %s", self.path[1:], error)
            self._reply(409, {"error": str(error)})
        except Exception as error:  # noqa: BLE001 - the client gets one line, the log the whole story
            log.exception("%s failed", self.path[1:])
            self._reply(500, {"error": f"{error.__class__.__name__}: {error}"})
        else:
            self._reply(200, result)

    def _body(self) -> dict[str, Any]:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("the request needs a Content-Length") from None
        if not 0 <= length <= MAX_BODY:
            raise BadRequest(f"the body must be at most {MAX_BODY} bytes")
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            raise BadRequest(f"the body did not come within {REQUEST_TIMEOUT:.0f}s", status=408) from None
        if len(data) < length:
            raise BadRequest(f"the body ended after {len(data)} of {length} bytes")
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as error:
            raise BadRequest(f"the body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def _reply(self, status: int, payload: Any) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")  # one request at a time: an idle client must not hold the service
        self.close_connection = True
        self.end_headers()
        self.wfile.write(data)


class MountService(socketserver.UnixStreamServer):
    """Serves one request at a time on ``path``."""

    timeout = 0.5  # seconds between looks at the stop flag while no request comes

    def __init__(self, path: Path) -> None:
        if _answers(path):
            raise ServiceError(f"a mount service already listens on {path}")
        if path.is_symlink() or path.exists() and not stat.S_ISSOCK(path.stat().st_mode):
            raise ServiceError(f"{path} exists and is not a socket")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # left by a service that did not stop cleanly
        self.path = path
        self.stopping = False
        umask = os.umask(0o177)  # the socket is created 0600: a mount runs as this process's user
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(umask)

    def serve_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, which take effect between requests."""

        def stop(_number: int, _frame: object) -> None:
            self.stopping = True

        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, stop)
        while not self.stopping:
            self.handle_request()
            self._reap()

    @staticmethod
    def _reap() -> None:
        """Reap the FUSE servers (children of this process) that have exited."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("request failed")

    def server_close(self) -> None:
        super().server_close()
        self.path.unlink(missing_ok=True)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


class ServiceClient:
    """Asks a mount service (at ``path``) to mount and unmount."""

    def __init__(self, path: Path, timeout: float = CLIENT_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout

    def mount(self, ref: str, mountpoint: Path, cache_dir: Path, mirror: str | None = None, plain_http: bool = False,
              prefetch: bool = False, cache_quota: int | str | None = None) -> dict[str, Any]:
        return self.call("/mount", {"ref": ref, "mountpoint": str(mountpoint), "cache_dir": str(cache_dir),
                                     "cache_quota": cache_quota, "mirror": mirror, "plain_http": plain_http,
                                     "prefetch": prefetch})

    def umount(self, mountpoint: Path) -> dict[str, Any]:
        return self.call("/umount", {"mountpoint": str(mountpoint)})

    def healthy(self) -> bool:
        try:
            status, _ = self._exchange("GET", HEALTHY_PATH)
        except ServiceError:
            return False
        return status == 200

    def _exchange(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        connection = _UnixConnection(self.path, self.timeout)
        try:
            connection.request(method, endpoint, None if body is None else json.dumps(body),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as error:
            raise ServiceError(f"mount service at {self.path}: {error}") from None
        finally:
            connection.close()

    def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``endpoint``; the answer, or ServiceError with the service's words."""
        status, data = self._exchange("POST", endpoint, body)
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ServiceError(f"mount service at {self.path} answered {status} without a JSON object")
        if status != 200:
            raise ServiceError(answer.get("error") or f"mount service answered {status}")
        return answer
