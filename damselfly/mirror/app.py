"""The OCI registry mirror: aiohttp routes around the blob service and the registry client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections import OrderedDict
from dataclasses import replace
from typing import AsyncIterator, Awaitable, Callable, Mapping
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from damselfly.core.blocklist import BlockList, refusal
from damselfly.core.jobs import ManifestPlacement
from damselfly.lib.httprange import ByteRange, RangeInvalid, RangeNotSatisfiable, parse_range
from damselfly.core.oci import (Digest, OCIError, Origin, SourceRefused, SourceUnavailable, error_body,
                               is_digest_reference, split_registry, validate_api_tail, validate_repository)
from damselfly.core.wire import MAX_INDEX_CHILDREN, ManifestRecord, TagConfirm, TagRecord
from damselfly.lib.serve import add_health_routes
from damselfly.blobs.service import BlobReader, BlobService, FileSpan, stored_origin
from damselfly.storage.task import TaskFailed
from damselfly.mirror.access import AccessCache
from damselfly.mirror.manifests import (MAX_KEPT_BYTES, MAX_MANIFEST_BYTES, KeptManifest, ManifestStore, TagResolution,
                                        accepts, child_manifests, descriptor_sizes, is_outage)
from damselfly.mirror.metrics import MirrorMetrics
from damselfly.mirror.sending import FileSender, SendingThreads
from damselfly.mirror.upstream import UpstreamResolver
from damselfly.network.scheduler_client import SchedulerUnavailable
from damselfly.network.tags import ClusterTags
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
CLUSTER_FETCH_TIMEOUT = 20.0  # seconds for a manifest's bytes from the cluster, in an outage
MAX_SIZES = 20_000  # blob sizes remembered from manifests served from what is kept
MANIFEST_ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"))

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
                 resolver: UpstreamResolver, metrics: MirrorMetrics, cluster: ClusterTags | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.blobs = blobs
        self.store = blobs.store
        self.registry_client = registry_client
        self.access = AccessCache(settings.access_ttl)
        self.resolver = resolver
        self.senders = SendingThreads(SENDING_THREADS)
        self.block_list = BlockList()  # the cluster's, from the manager (set_block_list)
        self.manifests = ManifestStore(settings.data_dir / "manifests",
                                       max_bytes=min(MAX_KEPT_BYTES, settings.cache_quota // 10))
        self.cluster = cluster  # the cluster's tag records (None: this node's own only)
        # Blob digest -> (size, private) from manifests served from what is kept: in an outage
        # the registry cannot say a blob's length, which a download through P2P needs.
        self.sizes: OrderedDict[str, tuple[int, bool]] = OrderedDict()

    def set_block_list(self, block_list: BlockList) -> None:
        """Refuse, from the next request on, the manifests and blobs ``block_list`` names."""
        self.block_list = block_list

    def keep_preheated(self, placement: ManifestPlacement, upstream: str) -> None:
        """A preheat's manifests and the tags its signed statement resolved, kept as if a pull
        had fetched them: a private image's stay behind the same access check, and a
        preheat never makes a protected copy public."""
        statement = placement.signed.statement
        types = {m.digest: statement.manifests[m.digest] for m in placement.manifests}  # the types it signed
        for manifest in placement.manifests:
            self.manifests.put(Digest.parse(manifest.digest), manifest.body, manifest.media_type, upstream,
                               statement.repository, protected=statement.private, unprotects=False)
        tags = {tag: digest for tag, digest in statement.tags.items() if digest in types}
        for tag, digest in tags.items():
            self.manifests.remember_tag(upstream, statement.repository, tag, Digest.parse(digest), types[digest])
        log.info("preheat: kept %d manifests and %d tags of %s/%s", len(placement.manifests), len(tags),
                 upstream, statement.repository)

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
        if kind == "manifests" and request.method in ("GET", "HEAD"):
            return await self.manifest(request, name, rest)
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
        upstream = await self._ask_upstream(request)
        if isinstance(upstream, web.Response):
            return upstream
        try:
            if upstream.status >= 500:
                raise SourceUnavailable(502, f"upstream {upstream.url.origin()} answered {upstream.status}")
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _ask_upstream(self, request: web.Request,
                            dropped: tuple[str, ...] = ()) -> aiohttp.ClientResponse | web.Response:
        """Upstream's answer to the request (its headers but ``dropped``), or the 408 for a
        client that stopped sending the body of a push."""
        query = [(k, v) for k, v in request.query.items() if k != "ns"]
        upstream_base = self._upstream(request)
        url = upstream_base + request.rel_url.raw_path
        headers = pick_headers(request.headers, PASSTHROUGH_REQUEST_HEADERS)
        redirected = request.method in ("GET", "HEAD")  # followed here: a body could not be sent twice
        for name in (*dropped, *(("Content-Length",) if redirected else ())):
            headers.popall(name, None)
        upload = asyncio.timeout(None)  # upstream's time to take each piece of the body: see _body_within
        data = self._body_within(request, upload) if request.body_exists and not redirected else None
        try:
            async with upload:
                return await self.registry_client.request(
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

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse, start: bytes = b"",
                     digest: Digest | None = None) -> web.StreamResponse:
        """Upstream's answer, sent on as it came: ``start`` (what was already read of its
        body), then the rest; with the ``digest`` asked for as its Docker-Content-Digest."""
        headers = pick_headers(upstream.headers, PASSTHROUGH_RESPONSE_HEADERS)
        if digest is not None:
            headers["Docker-Content-Digest"] = str(digest)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        request[RESPONSE_STARTED] = True
        if request.method != "HEAD":
            if start and not await self._deliver(request, response.write(start)):
                return response
            async for chunk in upstream.content.iter_chunked(64 * 1024):  # its own timeout: upstream's
                if not await self._deliver(request, response.write(chunk)):
                    return response
        await self._deliver(request, response.write_eof())
        return response

    # -- manifests -------------------------------------------------------------------

    async def manifest(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        """A manifest by digest from what this node keeps, if the caller may see it; else
        upstream's answer, kept when whole and true to its digest. When the registry fails,
        what is kept answers instead: see damselfly.mirror.manifests."""
        origin = Origin(self._upstream(request), name, request.headers.get("Authorization"))
        digest = Digest.parse(reference) if is_digest_reference(reference) else None
        if digest is not None:
            kept = self.manifests.get(digest, origin.registry)
            if kept is not None and self._may_see(kept.protected, Origin(kept.registry, kept.repository), origin):
                self.metrics.manifests.labels("kept").inc()
                return self._kept_response(request, kept)
        try:
            upstream = await self._ask_upstream(request, dropped=("Accept-Encoding", "Range"))
        except SourceUnavailable as outage:
            fallback = await self._stale(request, origin, reference, digest, outage.message)
            if fallback is None:
                raise
            return fallback
        if isinstance(upstream, web.Response):
            return upstream
        try:
            return await self._manifest_from(upstream, request, origin, reference, digest)
        finally:
            upstream.release()

    async def _manifest_from(self, upstream: aiohttp.ClientResponse, request: web.Request, origin: Origin,
                             reference: str, digest: Digest | None) -> web.StreamResponse:
        """Upstream's answer for a manifest: what is kept if upstream is failing; a whole
        200 body checked, kept and sent; anything else sent on as it came."""
        if is_outage(upstream.status):
            try:
                fallback = await self._stale(request, origin, reference, digest,
                                             f"upstream {upstream.url.origin()} answered {upstream.status}")
            except SourceUnavailable:
                if upstream.status != 429:
                    raise
                fallback = None  # a caller it cannot serve hears "too many requests", Retry-After and all
            if fallback is not None:
                return fallback
            if upstream.status >= 500:
                raise SourceUnavailable(502, f"upstream {upstream.url.origin()} answered {upstream.status}")
        if digest is None and upstream.status == 404:
            self.manifests.forget_tag(origin.registry, origin.repository, reference)  # never served stale again
        if _is_schema1(upstream.headers.get("Content-Type", "")) and upstream.status == 200:
            if digest is not None:  # signed: its digest is of a payload inside, not of these bytes
                raise SourceUnavailable(502, f"upstream answered {digest} with a Docker schema 1 manifest, "
                                             "whose digest this mirror cannot check: not sent")
            return await self._relay(request, upstream)  # by tag: passed on unkept, the client checks it
        encoded = "Content-Encoding" in upstream.headers  # asked for none: its bytes could not be checked
        if digest is not None and 200 <= upstream.status < 300 and (upstream.status != 200 or encoded):
            raise SourceUnavailable(502, f"upstream {upstream.url.origin()} answered {digest} with "
                                         f"{upstream.status}{' encoded' if encoded else ''}: not checkable")
        if upstream.status != 200 or encoded:
            return await self._relay(request, upstream)
        if request.method == "HEAD":
            self._remember(origin, reference, digest, upstream.headers, None)
            return await self._relay(request, upstream, digest=digest)
        body = await _read_up_to(upstream, MAX_MANIFEST_BYTES + 1)
        if len(body) > MAX_MANIFEST_BYTES:
            if digest is not None:  # registries take none this large (distribution's limit)
                raise SourceUnavailable(502, f"upstream sent more than {MAX_MANIFEST_BYTES} bytes for "
                                             f"manifest {digest}: not checked, not sent")
            return await self._relay(request, upstream, start=body)  # a tag's: the client checks it
        self._remember(origin, reference, digest, upstream.headers, body)
        headers = pick_headers(upstream.headers, PASSTHROUGH_RESPONSE_HEADERS)
        if digest is not None:
            headers["Docker-Content-Digest"] = str(digest)  # what was checked, whatever upstream said
        return web.Response(status=200, body=body, headers=headers)

    def _remember(self, origin: Origin, reference: str, digest: Digest | None, headers: Mapping[str, str],
                  body: bytes | None) -> Digest | None:
        """Keep a 200 manifest (``body``; None for a HEAD's headers alone) and the tag's
        resolution, which a seed is asked to confirm for the cluster; return the manifest's
        digest (None if its bytes do not match the one the registry stated). A manifest
        whose bytes do not hash to the digest asked for is a 502: the registry (or the path
        to it) lied."""
        content_type = headers.get("Content-Type", "")
        stated = _stated_digest(headers.get("Docker-Content-Digest"))
        if body is not None:
            expected = digest or stated or Digest("sha256", hashlib.sha256(body).hexdigest())
            if not self.manifests.put(expected, body, content_type, origin.registry, origin.repository,
                                      protected=origin.authorization is not None):
                if digest is not None:
                    log.error("upstream %s sent a manifest for %s@%s whose bytes do not match the digest: refused",
                              origin.registry, origin.repository, digest)
                    raise SourceUnavailable(502, f"upstream sent a manifest that does not match {digest}")
                log.warning("upstream %s sent %s:%s with Docker-Content-Digest %s that its bytes do not match: "
                            "not kept", origin.registry, origin.repository, reference, stated)
                return None
            stated = expected
        if origin.authorization:
            self.access.grant(origin)  # the registry just accepted these credentials
        if digest is None and stated is not None and content_type:
            self.manifests.remember_tag(origin.registry, origin.repository, reference, stated, content_type)
            if self.cluster is not None:
                self.cluster.confirm(TagConfirm(split_registry(origin.registry)[1], origin.repository, reference,
                                                origin.authorization))
        return stated

    async def _stale(self, request: web.Request, origin: Origin, reference: str, digest: Digest | None,
                     failure: str) -> web.Response | None:
        """With the registry failing: the kept manifest (by digest, or by the tag's last
        resolution within the stale-tag TTL, this node's or else a seed's), None if there is
        none; one this node does not keep comes through P2P from a seed (see _from_cluster).
        One fetched with credentials goes only to a caller the registry confirmed recently:
        503 otherwise."""
        resolution, by = None, "stale"
        if digest is None:
            resolution = self.manifests.tag(origin.registry, origin.repository, reference)
            if resolution is None or self.manifests.age(resolution) > self.settings.stale_tag_ttl:
                resolution, by = await self._cluster_tag(origin, reference), "cluster"
            if (resolution is None or self.manifests.age(resolution) > self.settings.stale_tag_ttl
                    or not accepts(request.headers.getall("Accept", []), resolution.content_type)):
                return None
            digest = resolution.digest
        kept = self.manifests.get(digest, origin.registry) or await self._from_cluster(origin, digest, failure)
        if kept is None:
            return None
        if not self._may_see(kept.protected, Origin(kept.registry, kept.repository), origin):
            self._refuse_unconfirmed(origin, failure)
        if resolution is not None:
            log.warning("%s: served %s:%s as %s, its resolution %.0f s ago%s", failure, origin.repository, reference,
                        kept.digest, self.manifests.age(resolution), " by a seed (cluster)" if by == "cluster" else "")
        self.metrics.manifests.labels("kept" if resolution is None else by).inc()
        return self._kept_response(request, kept)

    def _refuse_unconfirmed(self, origin: Origin, failure: str) -> None:
        self.metrics.manifests.labels("refused").inc()
        raise SourceUnavailable(503, f"{failure}; {origin.repository} needs credentials that the registry has "
                                     "not confirmed recently for this caller: not served unchecked")

    async def _cluster_tag(self, origin: Origin, tag: str) -> TagResolution | None:
        """The tag as a seed last resolved it at the registry, if one did."""
        if self.cluster is None:
            return None
        try:
            record = await self.cluster.tag(split_registry(origin.registry)[1], origin.repository, tag)
        except SchedulerUnavailable as exc:
            log.warning("the cluster's resolution of %s:%s could not be read: %s", origin.repository, tag, exc)
            return None
        if record is None:
            return None
        manifest = record.manifest
        return TagResolution(Digest.parse(manifest.digest), manifest.media_type, record.resolved_at)

    async def _from_cluster(self, origin: Origin, digest: Digest, failure: str) -> KeptManifest | None:
        """A manifest a seed keeps, by its record: its bytes through P2P (as a blob of its
        digest), checked against the digest, then kept here. A record whose bytes no seed
        sends in time is a 502; a private one, for a caller not confirmed here, a 503."""
        if self.cluster is None:
            return None
        try:
            record = await self.cluster.manifest(split_registry(origin.registry)[1], origin.repository, str(digest))
        except SchedulerUnavailable as exc:
            log.warning("the cluster's record of %s could not be read: %s", digest, exc)
            return None
        if record is None:
            return None
        source = Origin(origin.registry, record.repository, private=record.private)
        if not self._may_see(record.private, source, origin):
            self._refuse_unconfirmed(origin, failure)
        try:
            async with asyncio.timeout(CLUSTER_FETCH_TIMEOUT):
                await self.blobs.place(digest, source, length=record.size)
        except TimeoutError:
            raise SourceUnavailable(502, f"{failure}; no seed sent manifest {digest} within "
                                         f"{CLUSTER_FETCH_TIMEOUT:g}s") from None
        except (SourceRefused, SourceUnavailable) as exc:
            raise SourceUnavailable(502, f"{failure}; manifest {digest} could not be had from the cluster: "
                                         f"{getattr(exc, 'message', exc)}") from None
        stored = self.store.lookup(digest)
        body = stored.path.read_bytes() if stored is not None else b""
        if not self.manifests.put(digest, body, record.media_type, origin.registry, record.repository,
                                  protected=record.private):
            raise SourceUnavailable(502, f"{failure}; the cluster's copy of {digest} does not match it: not served")
        log.info("manifest %s of %s came from the cluster", digest, origin.repository)
        return KeptManifest(digest, record.media_type, body, origin.registry, record.repository, record.private)

    def _may_see(self, protected: bool, source: Origin, origin: Origin) -> bool:
        """Public, or the registry it came from (``source``) recently accepted the caller's credentials there."""
        return not protected or (origin.authorization is not None and self.access.allowed(
            Origin(source.registry, source.repository, origin.authorization)))

    async def confirm_tag(self, confirm: TagConfirm, upstream: str) -> None:
        """A seed's part: resolve the tag at ``upstream`` (the registry ``confirm`` names) with
        the caller's credentials; keep its manifest and an index's children (checked as a
        pull's are), hold each as a blob of its digest for P2P, and publish the tag and the
        manifests to the cluster. Nothing a node said is taken: only what the registry sent."""
        assert self.cluster is not None  # a seed's mirror has the cluster
        origin = Origin(upstream, confirm.repository, confirm.authorization)
        what = f"{confirm.registry}/{confirm.repository}:{confirm.tag}"
        try:
            kept = [await self._fetch_manifest(origin, confirm.tag)]
            kept += [await self._fetch_manifest(origin, str(child))
                     for child in child_manifests(kept[0].body)[:MAX_INDEX_CHILDREN]]
        except (SourceRefused, SourceUnavailable) as exc:
            log.warning("could not confirm %s: %s", what, getattr(exc, "message", exc))
            return
        records = []
        for manifest in kept:
            await self.blobs.keep(manifest.digest, manifest.body, origin)
            records.append(ManifestRecord(confirm.registry, confirm.repository, str(manifest.digest),
                                          len(manifest.body), manifest.content_type, origin.protected))
        try:
            await self.cluster.publish(TagRecord(confirm.tag, records[0], time.time()), tuple(records))
        except (SchedulerUnavailable, ValueError) as exc:
            log.warning("could not publish %s: %s", what, exc)
            return
        log.info("confirmed %s as %s for the cluster (%d manifests)", what, records[0].digest, len(records))

    async def _fetch_manifest(self, origin: Origin, reference: str) -> KeptManifest:
        """A manifest GET at the registry, checked and kept as a pull's (_remember);
        SourceUnavailable if it is not one this mirror would keep."""
        headers = CIMultiDict({"Accept": MANIFEST_ACCEPT})
        if origin.authorization:
            headers["Authorization"] = origin.authorization
        upstream = await self.registry_client.request(
            "GET", f"{origin.registry}/v2/{origin.repository}/manifests/{reference}", headers, None,
            follow_redirects=True)
        try:
            content_type = upstream.headers.get("Content-Type", "")
            if upstream.status != 200 or "Content-Encoding" in upstream.headers or _is_schema1(content_type):
                raise SourceUnavailable(502, f"the registry answered {upstream.status} {content_type}: not kept")
            body = await _read_up_to(upstream, MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES:
                raise SourceUnavailable(502, f"more than {MAX_MANIFEST_BYTES} bytes: not kept")
            digest = Digest.parse(reference) if is_digest_reference(reference) else None
            checked = self._remember(origin, reference, digest, upstream.headers, body)
        finally:
            upstream.release()
        if checked is None:
            raise SourceUnavailable(502, "its bytes do not match the registry's Docker-Content-Digest")
        return KeptManifest(checked, content_type, body, origin.registry, origin.repository, origin.protected)

    def _kept_response(self, request: web.Request, kept: KeptManifest) -> web.Response:
        """A kept manifest; the sizes of the blobs it lists are remembered (see _blob_in_outage)."""
        for blob, size in descriptor_sizes(kept.body).items():
            self.sizes[blob] = (size, kept.protected)
            self.sizes.move_to_end(blob)
        while len(self.sizes) > MAX_SIZES:
            self.sizes.popitem(last=False)
        headers = {"Content-Type": kept.content_type, "Docker-Content-Digest": str(kept.digest),
                   "ETag": f'"{kept.digest}"', "Content-Length": str(len(kept.body)), **API_VERSION}
        return web.Response(status=200, headers=headers, body=None if request.method == "HEAD" else kept.body)

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
        ranged = "Range" in request.headers
        async with contextlib.AsyncExitStack() as stack:
            asked_registry = True
            try:
                reader = await stack.enter_async_context(self.blobs.open(digest, origin, ranged))
            except SourceUnavailable as outage:
                reader = await stack.enter_async_context(self._blob_in_outage(digest, origin, ranged, outage))
                asked_registry = False
            if reader.protected and not reader.started_here:
                await self._confirm_access(reader.origin, origin.authorization, digest)
            elif reader.started_here and origin.authorization and asked_registry:
                self.access.grant(origin)  # the registry just accepted these credentials
            return await self._send_blob(request, reader)

    def _blob_in_outage(self, digest: Digest, origin: Origin, ranged: bool,
                        outage: SourceUnavailable) -> contextlib.AbstractAsyncContextManager[BlobReader]:
        """The registry cannot say the blob's length (a peer's download needs it): the size a
        manifest served from what is kept gave, if there is one, and the caller may see the
        blob (a private manifest's blobs only to a caller the registry confirmed recently)."""
        size, private = self.sizes.get(str(digest), (None, False))
        if size is None or outage.status == 507:
            raise outage
        if not self._may_see(private, origin, origin):
            self._refuse_unconfirmed(origin, outage.message)
        log.info("%s: %s sized %d bytes by a kept manifest, fetched through the cluster", outage.message, digest, size)
        return self.blobs.open(digest, replace(origin, private=private), ranged, length=size)

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


async def _read_up_to(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    """Upstream's body until its end or ``limit`` bytes; a registry that breaks off is a 502."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit and (chunk := await upstream.content.readany()):
            chunks.append(chunk)
            size += len(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SourceUnavailable(502, f"upstream {upstream.url.origin()} broke off a manifest: "
                                     f"{exc or type(exc).__name__}") from None
    return b"".join(chunks)


def _is_schema1(content_type: str) -> bool:
    """Docker's schema 1 manifests (deprecated; containerd 2 pulls none): never kept."""
    return content_type.split(";")[0].strip().lower() in (
        "application/vnd.docker.distribution.manifest.v1+prettyjws", "application/vnd.docker.distribution.manifest.v1+json")


def _stated_digest(value: str | None) -> Digest | None:
    """A Docker-Content-Digest header's digest; None if missing or malformed."""
    try:
        return Digest.parse(value) if value else None
    except OCIError:
        return None


def _reschedule(timeout: asyncio.Timeout, when: float | None) -> None:
    """Move ``timeout``, unless it is over (upstream may answer before it takes the whole body)."""
    with contextlib.suppress(RuntimeError):
        timeout.reschedule(when)
