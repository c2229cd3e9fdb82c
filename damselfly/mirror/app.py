"""The OCI registry mirror: aiohttp routes around the blob service and the registry client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import replace
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web
from multidict import CIMultiDict

from damselfly.core.blocklist import BlockList, refusal
from damselfly.lib.httprange import ByteRange, RangeInvalid, RangeNotSatisfiable, parse_range
from damselfly.core.oci import (Digest, OCIError, Origin, SourceRefused, SourceUnavailable, error_body, validate_api_tail,
                               validate_repository)
from damselfly.lib.serve import add_health_routes
from damselfly.blobs.service import BlobReader, BlobService, FileSpan, stored_origin
from damselfly.storage.task import TaskFailed
from damselfly.mirror.access import AccessCache
from damselfly.mirror.metrics import MirrorMetrics
from damselfly.mirror.sending import FileSender, SendingThreads
from damselfly.mirror.upstream import UpstreamResolver
from damselfly.registry.client import (
    PASSTHROUGH_REQUEST_HEADERS,
    PASSTHROUGH_RESPONSE_HEADERS,
    AsyncRegistryClient,
    pick_headers,
)
from damselfly.settings import MirrorSettings

log = logging.getLogger(__name__)

RESPONSE_STARTED = web.RequestKey("response_started", bool)
BODY_STALLED = web.RequestKey("body_stalled", bool)  # the client stopped sending its request body
SENDING_THREADS = 64  # cached-blob copies at once; past that, responses use sendfile

REGISTRY_HEADER = "X-Dragonfly-Registry"
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
# fullmatch with DOTALL: "$" would let a trailing (percent-encoded) newline through.
_API_PATH = re.compile(r"(?P<name>.+)/(?P<kind>blobs|manifests|tags|referrers)/(?P<rest>.*)", re.DOTALL)


def request_kind(path: str) -> str:
    if path in ("/v2", "/v2/"):
        return "ping"
    if "/blobs/" in path and "/blobs/uploads" not in path:
        return "blob"
    if "/manifests/" in path:
        return "manifest"
    return "other" if path.startswith("/v2/") else "service"


class Mirror:
    """One node's mirror: resolves the upstream, serves blobs by digest, passes the rest through.

    It serves through the blob service and registry client it is given (damselfly.node
    builds them), and closes both once its last request is done: it is their last user.
    """

    def __init__(self, settings: MirrorSettings, blobs: BlobService, registry_client: AsyncRegistryClient,
                 resolver: UpstreamResolver, metrics: MirrorMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.blobs = blobs
        self.store = blobs.store
        self.registry_client = registry_client
        self.access = AccessCache(settings.access_ttl)
        self.resolver = resolver
        self.senders = SendingThreads(SENDING_THREADS)
        self.block_list = BlockList()  # the cluster's, from the manager (set_block_list)

    def set_block_list(self, block_list: BlockList) -> None:
        """Refuse, from the next request on, the manifests and blobs ``block_list`` names."""
        self.block_list = block_list

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors_and_metrics], client_max_size=1024**2)
        add_health_routes(app, self.metrics.registry)
        app.router.add_route("*", "/v2", self.registry_route)
        app.router.add_route("*", "/v2/{path:.*}", self.registry_route)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, _: web.Application) -> None:
        await self.blobs.close()
        await self.registry_client.close()
        self.senders.shutdown()

    # -- cross-cutting -------------------------------------------------------------

    @web.middleware
    async def _errors_and_metrics(self, request: web.Request,
                                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        kind = request_kind(request.path)
        try:
            response = await handler(request)
        except OCIError as exc:
            response = self._error(request, exc.status, exc.code, exc.message)
        except SourceRefused as exc:
            response = web.Response(status=exc.status, headers=exc.headers,
                                    body=None if request.method == "HEAD" else exc.body)
        except SourceUnavailable as exc:
            log.warning("%s %s: %s", request.method, request.path_qs, exc.message)
            response = self._error(request, exc.status, "UNAVAILABLE", exc.message)
        except web.HTTPException as exc:
            response = self._error(request, exc.status, "UNSUPPORTED", exc.reason)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 - a request never takes the process down
            if request.get(RESPONSE_STARTED):
                # Headers are out: only cutting the connection tells the client the body is incomplete.
                log.error("%s %s failed mid-response, connection cut: %s", request.method, request.path_qs, exc)
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("response aborted") from exc
            log.exception("unexpected error on %s %s", request.method, request.path_qs)
            response = self._error(request, 500, "UNKNOWN", "internal error, see the daemon log")
        self.metrics.requests.labels(kind, request.method, str(response.status)).inc()
        return response

    @staticmethod
    def _error(request: web.Request, status: int, code: str, message: str) -> web.Response:
        body = None if request.method == "HEAD" else error_body(code, message)
        return web.Response(status=status, body=body, content_type="application/json")

    # -- registry API --------------------------------------------------------------

    async def registry_route(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info.get("path", "")
        if path == "":
            if request.method not in ("GET", "HEAD"):
                raise OCIError(405, "UNSUPPORTED", f"{request.method} /v2/ is not allowed")
            return web.Response(body=b"{}", content_type="application/json", headers=API_VERSION)
        if path == "_catalog":
            return await self.passthrough(request)
        match = _API_PATH.fullmatch(path)
        if match is None:
            raise OCIError(404, "UNSUPPORTED", f"unknown registry API path /v2/{path}")
        name, kind, rest = match["name"], match["kind"], match["rest"]
        validate_repository(name)
        validate_api_tail(kind, rest)
        if self.block_list and request.method in ("GET", "HEAD") and kind in ("blobs", "manifests"):
            self._refuse_if_blocked(request, name, kind, rest)
        if kind == "blobs" and request.method in ("GET", "HEAD") and not rest.startswith("uploads"):
            return await self.blob(request, name, rest)
        return await self.passthrough(request)

    def _refuse_if_blocked(self, request: web.Request, name: str, kind: str, reference: str) -> None:
        """403 with the block list's entry for a manifest or blob the cluster refuses."""
        if reference.startswith("uploads"):
            return
        registry = self.resolver.name_of(request.headers.get(REGISTRY_HEADER), request.query.get("ns"))
        if kind == "blobs":
            entry, what = self.block_list.blob(registry, name, reference), f"blob {reference}"
        else:
            separator = "@" if ":" in reference else ":"
            entry, what = self.block_list.manifest(registry, name, reference), f"{registry}/{name}{separator}{reference}"
        if entry is not None:
            log.info("refused %s %s for %s: on the block list (entry %r)", request.method, what, request.remote, entry)
            raise OCIError(403, "DENIED", refusal(what, entry))

    def _upstream(self, request: web.Request) -> str:
        return self.resolver.resolve(request.headers.get(REGISTRY_HEADER), request.query.get("ns"))

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        """Send the request upstream as it is and stream the answer back unchanged."""
        query = [(k, v) for k, v in request.query.items() if k != "ns"]
        upstream_base = self._upstream(request)
        url = upstream_base + request.rel_url.raw_path
        headers = pick_headers(request.headers, PASSTHROUGH_REQUEST_HEADERS)
        redirected = request.method in ("GET", "HEAD")  # followed here: a body could not be sent twice
        if redirected:
            headers.popall("Content-Length", None)
        upload = asyncio.timeout(None)  # upstream's time to take each piece of the body: see _body_within
        data = self._body_within(request, upload) if request.body_exists and not redirected else None
        try:
            async with upload:
                upstream = await self.registry_client.request(
                    request.method, url if not query else f"{url}?{urlencode(query)}", headers, data,
                    follow_redirects=redirected)
        except TimeoutError:
            raise SourceUnavailable(504, f"upstream {upstream_base} stopped taking the request body "
                                         f"for {self.settings.upstream_read_timeout:g}s") from None
        except SourceUnavailable:
            if not request.get(BODY_STALLED):
                raise
            log.info("client %s stopped sending the body of %s %s for %gs: answered 408", request.remote,
                     request.method, request.path, self.settings.client_body_timeout)
            stalled = self._error(request, 408, "UNKNOWN",
                                  f"no request body bytes for {self.settings.client_body_timeout:g}s")
            stalled.force_close()  # the rest of the body is not worth waiting for
            return stalled
        try:
            if upstream.status >= 500:
                raise SourceUnavailable(502, f"upstream {upstream.url.origin()} answered {upstream.status}")
            response = web.StreamResponse(status=upstream.status,
                                          headers=pick_headers(upstream.headers, PASSTHROUGH_RESPONSE_HEADERS))
            await response.prepare(request)
            request[RESPONSE_STARTED] = True
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(64 * 1024):  # its own timeout: upstream's
                    if not await self._deliver(request, response.write(chunk)):
                        return response
            await self._deliver(request, response.write_eof())
            return response
        finally:
            upstream.release()

    async def _body_within(self, request: web.Request, upload: asyncio.Timeout) -> AsyncIterator[bytes]:
        """The client's request body as it goes upstream (a push through the mirror), with
        the client body timeout for each read from the client and, through ``upload``, the
        upstream read timeout for upstream to take each chunk (and to answer after the
        last): neither side that stops mid-body may hold this handler and an upstream
        connection for ever. A client's stall ends the upload, marked on the request."""
        loop = asyncio.get_running_loop()
        while True:
            _reschedule(upload, None)  # the client's turn, timed here
            try:
                async with asyncio.timeout(self.settings.client_body_timeout):
                    chunk = await request.content.readany()
            except TimeoutError:
                request[BODY_STALLED] = True
                raise
            _reschedule(upload, loop.time() + self.settings.upstream_read_timeout)  # upstream's turn
            if not chunk:
                return
            yield chunk

    async def _deliver(self, request: web.Request, write: Awaitable[None]) -> bool:
        """A write to the client within the client send timeout; past it the client is cut off (False)."""
        try:
            async with asyncio.timeout(self.settings.client_send_timeout):
                await write
            return True
        except TimeoutError:
            log.info("client %s stopped reading %s: cut off", request.remote, request.path)
            if request.transport is not None:
                request.transport.abort()
            return False

    async def blob(self, request: web.Request, name: str, digest_text: str) -> web.StreamResponse:
        validate_repository(name)
        digest = Digest.parse(digest_text)
        origin = Origin(self._upstream(request), name, request.headers.get("Authorization"))
        if request.method == "HEAD":
            stored = self.store.lookup(digest)
            if stored is not None:
                if stored.meta.protected:
                    await self._confirm_access(stored_origin(stored), origin.authorization, digest)
                return self._blob_head(stored.meta.length, digest)
            downloading = self.blobs.protected_download(digest)
            if downloading is not None:  # not stored yet: the same check, against where it comes from
                task, source = downloading
                await self._confirm_access(source, origin.authorization, digest)
                return self._blob_head(task.length, digest)
            return await self.passthrough(request)
        async with self.blobs.open(digest, origin, ranged="Range" in request.headers) as reader:
            if reader.protected and not reader.started_here:
                await self._confirm_access(reader.origin, origin.authorization, digest)
            elif reader.started_here and origin.authorization:
                self.access.grant(origin)  # the registry just accepted these credentials
            return await self._send_blob(request, reader)

    async def _confirm_access(self, source: Origin, authorization: str | None, digest: Digest) -> None:
        """A protected blob goes only to callers whom the registry it came from (``source``)
        lets fetch it from the repository it came from. Never the registry a caller names:
        one that says yes to everything would hand out whatever this cache holds."""
        checked = replace(source, authorization=authorization)
        if self.access.allowed(checked):
            return
        try:
            await self.registry_client.blob_length(checked, digest)
        except (SourceRefused, SourceUnavailable):
            self.metrics.access_checks.labels("refused").inc()
            raise
        self.metrics.access_checks.labels("granted").inc()
        self.access.grant(checked)

    @staticmethod
    def _blob_headers(length: int, digest: Digest) -> CIMultiDict[str]:
        return CIMultiDict({
            "Content-Type": "application/octet-stream",
            "Docker-Content-Digest": str(digest),
            "Accept-Ranges": "bytes",
            "ETag": f'"{digest}"',
            "Content-Length": str(length),
            **API_VERSION,
        })

    def _blob_head(self, length: int, digest: Digest) -> web.Response:
        return web.Response(status=200, headers=self._blob_headers(length, digest))

    async def _send_blob(self, request: web.Request, reader: BlobReader) -> web.StreamResponse:
        length = reader.length
        try:
            byte_range = parse_range(request.headers.get("Range"), length)
        except RangeNotSatisfiable as exc:
            return web.Response(status=416, body=error_body("RANGE_INVALID", str(exc)), content_type="application/json",
                                headers={"Content-Range": f"bytes */{length}"})
        except RangeInvalid as exc:
            raise OCIError(400, "RANGE_INVALID", str(exc)) from None
        whole = byte_range or ByteRange(0, length - 1)
        headers = self._blob_headers(whole.count if length else 0, reader.digest)
        if byte_range is not None:
            headers["Content-Range"] = byte_range.content_range(length)
        async with contextlib.aclosing(reader.body(whole.first, whole.last)) as body:
            first_part = None
            if length:
                try:
                    first_part = await anext(body)  # a failure before any byte is a clean 502
                except TaskFailed as exc:
                    raise SourceUnavailable(502, f"download of {reader.digest} failed: {exc}") from None
            response = web.StreamResponse(status=206 if byte_range else 200, headers=headers)
            await response.prepare(request)
            request[RESPONSE_STARTED] = True
            transport = request.transport
            if transport is None:
                return response
            sender = FileSender(transport, reader.file, self.senders, self.settings.client_send_timeout,  # type: ignore[arg-type]
                                copy=reader.from_cache) if reader.file is not None else None
            self.metrics.active_streams.inc()
            try:
                if first_part is not None:
                    await self._send_part(request, response, sender, first_part, reader.from_cache)
                    async for part in body:
                        await self._send_part(request, response, sender, part, reader.from_cache)
            except TaskFailed as exc:
                log.error("cut off a response for %s mid-stream: %s", reader.digest, exc)
                transport.abort()
                return response
            except ConnectionError as exc:
                log.info("client %s went away while receiving %s: %s", request.remote, reader.digest, exc)
                transport.abort()  # the body is short: the connection cannot carry another response
                return response
            finally:
                if sender is not None:
                    sender.close()
                self.metrics.active_streams.dec()
        await response.write_eof()
        return response

    async def _send_part(self, request: web.Request, response: web.StreamResponse, sender: FileSender | None,
                         part: FileSpan | memoryview, from_cache: bool) -> None:
        """A run of the reader's file (zero-copy), or bytes that came from the source uncached."""
        if isinstance(part, FileSpan):
            assert sender is not None  # only a reader with a file yields runs of it
            await sender.send(part.offset, part.count)
            self.metrics.served_bytes.labels("cache" if from_cache else "download").inc(part.count)
            return
        if not await self._deliver(request, response.write(part)):
            raise ConnectionAbortedError("the client stopped reading")
        self.metrics.served_bytes.labels("uncached").inc(len(part))


def _reschedule(timeout: asyncio.Timeout, when: float | None) -> None:
    """Move ``timeout``, unless it is over (upstream may answer before it takes the whole body)."""
    with contextlib.suppress(RuntimeError):
        timeout.reschedule(when)
