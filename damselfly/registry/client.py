"""The registry client's async face, for the mirror and the seed: blob downloads, access
checks and passthrough, with the caller's credentials.

Passthrough requests go through aiohttp; a blob body is read on a blocking connection of
lib/blockinghttp's session by a worker thread. Both follow the same redirect policy
(follow_redirect) and the blob answers meet registry/rules.py's checks, as the nydus
commands' blocking face does.
"""

from __future__ import annotations

import asyncio
import http.client
import os
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from damselfly.lib.blockinghttp import (MAX_REDIRECTS, ProxyRefused, RedirectRefused, Response, Session,
                                       follow_redirect, origin_of, proxy_authorization, proxy_for, without_credentials)
from damselfly.core.oci import Digest, Origin, SourceRefused, SourceUnavailable
from damselfly.registry.rules import Span, answers_blob, blob_answer_problem, blob_url, range_header

# Response headers a client must see unchanged.
PASSTHROUGH_RESPONSE_HEADERS = (
    "Content-Type", "Content-Length", "Content-Range", "Docker-Content-Digest", "WWW-Authenticate",
    "Docker-Distribution-API-Version", "Location", "Range", "Link", "ETag", "Content-Encoding",
    "OCI-Subject", "OCI-Filters-Applied", "Docker-Upload-UUID", "Last-Modified", "Cache-Control", "Retry-After",
)
# Request headers passed upstream (credentials, content negotiation, uploads).
PASSTHROUGH_REQUEST_HEADERS = (
    "Authorization", "Accept", "Content-Type", "Content-Length", "Content-Range", "Range",
    "User-Agent", "If-None-Match", "Accept-Encoding",
)
ERROR_BODY_LIMIT = 64 * 1024
CHUNK_SIZE = 1024 * 1024
# A proxy that refuses a CONNECT tunnel for want of credentials: 407, or 401 from some (tinyproxy).
PROXY_AUTH_STATUSES = (401, 407)


def pick_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str], names: tuple[str, ...]) -> CIMultiDict[str]:
    picked: CIMultiDict[str] = CIMultiDict()
    for name in names:
        for value in headers.getall(name, []):
            picked.add(name, value)
    return picked


class RegistryStream:
    """A blob download from a registry on a blocking connection, read on a worker thread.

    A blob body is the hot path of a cold pull: read through the event loop it costs a
    Python callback per socket read; here a worker thread reads it straight into its
    own buffers (see damselfly.storage.writer). Read to its end, its connection is kept for
    the next download from that registry (a seed filling nydus ranges makes many).
    """

    def __init__(self, response: Response) -> None:
        self._response = response
        self._origin = origin_of(response.url)
        self.length = response.raw.length or 0

    def readinto(self, buffer: memoryview) -> int:
        """Blocking; 0 at the end. Network failures become SourceUnavailable."""
        try:
            return self._response.raw.readinto(buffer)
        except TimeoutError:
            raise SourceUnavailable(504, f"registry {self._origin} stopped sending") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SourceUnavailable(502, f"registry {self._origin} broke off: {exc}") from None

    def abort(self) -> None:
        """From any thread: make a blocked ``readinto`` fail at once."""
        self._response.abort()

    def close(self) -> None:
        self._response.close()


def _refusal(status: int, headers: CIMultiDictProxy[str] | CIMultiDict[str], body: bytes,
             url: str) -> SourceRefused | SourceUnavailable:
    """A non-success answer: client errors pass back unchanged, server errors become 502."""
    if status >= 500:
        return SourceUnavailable(502, f"upstream {origin_of(url)} answered {status}")
    if status == 407:  # from a proxy that forwards http requests
        return _proxy_refused(url, status, proxy_for(url, os.environ) or "")
    picked = pick_headers(headers, ("Content-Type", "WWW-Authenticate", "Docker-Distribution-API-Version"))
    return SourceRefused(status, dict(picked), body)


def _proxy_refused(url: str, status: int, proxy: str) -> SourceUnavailable:
    """Our proxy's refusal (for ``url``, the hop it refused) is no answer for the client,
    which cannot give the proxy credentials: 502, saying what to fix."""
    shown = without_credentials(proxy) if proxy else "proxy"
    if status not in PROXY_AUTH_STATUSES:
        return SourceUnavailable(502, f"the proxy {shown} to upstream {origin_of(url)} answered {status}")
    return SourceUnavailable(502, f"the proxy {shown} to upstream {origin_of(url)} wants credentials ({status}): "
                                  "give them in the proxy variable as http://user:password@host:port")


def _close_unread(opened: "asyncio.Future[RegistryStream]") -> None:
    if not opened.cancelled() and opened.exception() is None:
        opened.result().close()


def _read_error_body(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read(ERROR_BODY_LIMIT)
    except (OSError, http.client.HTTPException):
        return b""


class AsyncRegistryClient:
    """Talks to upstream registries with the caller's credentials; every call has a deadline."""

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 60.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._openers = ThreadPoolExecutor(16, thread_name_prefix="registry-open")  # blocking connects, own pool
        self._blocking = Session(connect_timeout, read_timeout)  # blob downloads: kept-alive, proxied, redirected
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                auto_decompress=False,  # bytes pass through exactly as the registry sent them
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60),
                read_bufsize=CHUNK_SIZE,  # fewer, larger reads of passthrough bodies and origin ranges
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        self._openers.shutdown(wait=False)
        self._blocking.close()

    @staticmethod
    def _auth_headers(origin: Origin) -> dict[str, str]:
        headers = {"Accept": "*/*"}
        if origin.authorization:
            headers["Authorization"] = origin.authorization
        return headers

    async def request(self, method: str, url: str, headers: CIMultiDict[str], data: object = None,
                      follow_redirects: bool = True) -> aiohttp.ClientResponse:
        """Send one request, following redirects (the caller asks only for GET and HEAD: a
        body could not be sent twice) hop by hop: each hop goes through the proxy the
        environment names for it, if any. Connection problems become SourceUnavailable
        (502/504)."""
        headers = CIMultiDict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send(method, url, headers, data)
            if not follow_redirects:
                return response
            try:
                redirect = follow_redirect(method, url, response.status, response.headers.get("Location"))
            except RedirectRefused as exc:
                response.release()
                raise SourceUnavailable(502, str(exc)) from None
            if redirect is None:
                return response
            response.release()
            for name in redirect.dropped:
                headers.popall(name, None)
            method, url = redirect.method, redirect.url
            data = None if redirect.drops_body else data
        raise SourceUnavailable(502, f"upstream {url} redirected too many times")

    async def _send(self, method: str, url: str, headers: CIMultiDict[str], data: object) -> aiohttp.ClientResponse:
        proxy = proxy_for(url, os.environ) or ""
        try:
            response = await self.session.request(method, url, headers=headers, data=data, allow_redirects=False,
                                                  proxy=without_credentials(proxy) if proxy else None,
                                                  proxy_headers=proxy_authorization(proxy) if proxy else None)
        except asyncio.TimeoutError:
            raise SourceUnavailable(504, f"upstream {url} did not answer in time") from None
        except aiohttp.ClientHttpProxyError as exc:  # the tunnel to an https registry was refused
            raise _proxy_refused(url, exc.status, proxy) from None
        except aiohttp.ClientError as exc:
            raise SourceUnavailable(502, f"cannot reach upstream {url}: {exc}") from None
        if response.status == 407 and proxy:
            response.release()
            raise _proxy_refused(url, response.status, proxy)
        return response

    async def _refusal(self, response: aiohttp.ClientResponse) -> SourceRefused | SourceUnavailable:
        try:
            body = await response.content.read(ERROR_BODY_LIMIT)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            body = b""
        finally:
            response.release()
        return _refusal(response.status, response.headers, body, str(response.url))

    async def open_blob(self, origin: Origin, digest: Digest, span: Span | None = None) -> RegistryStream:
        """GET the blob, or ``span`` (start, length) of it, on a blocking connection (redirects
        followed); its body is read on a thread."""
        headers = self._auth_headers(origin)
        if span is not None:
            headers["Range"] = range_header(span)
        opening = asyncio.get_running_loop().run_in_executor(
            self._openers, self._open_blob, blob_url(origin.registry, origin.repository, str(digest)), headers, span)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:  # nobody will read it: close the stream once it opens
            opening.add_done_callback(_close_unread)
            raise

    def _open_blob(self, url: str, headers: dict[str, str], span: Span | None) -> RegistryStream:
        try:
            response = self._blocking.request("GET", url, headers)
        except TimeoutError:
            raise SourceUnavailable(504, f"upstream {url} did not answer in time") from None
        except ProxyRefused as exc:
            raise _proxy_refused(exc.url, exc.status, exc.proxy) from None
        except (OSError, http.client.HTTPException) as exc:
            raise SourceUnavailable(502, f"cannot reach upstream {url}: {exc}") from None
        try:
            raw, answered = response.raw, response.url
            if not answers_blob(raw.status, span):
                raise _refusal(raw.status, CIMultiDict(raw.getheaders()), _read_error_body(raw), answered)
            problem = blob_answer_problem(raw.status, raw.getheader("Content-Range"), raw.length, span)
            if problem:
                raise SourceUnavailable(502, f"upstream {answered} {problem}")
            return RegistryStream(response)
        except BaseException:
            response.close()
            raise

    async def blob_length(self, origin: Origin, digest: Digest) -> int:
        """HEAD the blob with the caller's credentials: its length, or the registry's refusal."""
        url = blob_url(origin.registry, origin.repository, str(digest))
        response = await self.request("HEAD", url, CIMultiDict(self._auth_headers(origin)))
        if response.status != 200:
            raise await self._refusal(response)
        response.release()
        if response.content_length is None:
            raise SourceUnavailable(502, f"upstream {url} sent no Content-Length for a blob")
        return response.content_length
