"""HTTP client for upstream registries: blob downloads, access checks and passthrough."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urljoin

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from damselfly.lib.blockinghttp import Route, origin_of, proxy_authorization, proxy_for, without_credentials
from damselfly.lib.oci import Digest
from damselfly.p2p.blobs import Origin, SourceRefused, SourceUnavailable

log = logging.getLogger(__name__)

# Response headers a client must see unchanged.
PASSTHROUGH_RESPONSE_HEADERS = (
    "Content-Type", "Content-Length", "Content-Range", "Docker-Content-Digest", "WWW-Authenticate",
    "Docker-Distribution-API-Version", "Location", "Range", "Link", "ETag", "Content-Encoding",
    "OCI-Subject", "OCI-Filters-Applied", "Docker-Upload-UUID", "Last-Modified", "Cache-Control",
)
# Request headers passed upstream (credentials, content negotiation, uploads).
PASSTHROUGH_REQUEST_HEADERS = (
    "Authorization", "Accept", "Content-Type", "Content-Length", "Content-Range", "Range",
    "User-Agent", "If-None-Match", "Accept-Encoding",
)
ERROR_BODY_LIMIT = 64 * 1024
CHUNK_SIZE = 1024 * 1024
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)


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
    own buffers (see damselfly.p2p.writer).
    """

    def __init__(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
                 url: str, length: int) -> None:
        self._connection = connection
        self._response = response
        self._origin = origin_of(url)
        self.length = length

    def readinto(self, buffer: memoryview) -> int:
        """Blocking; 0 at the end. Network failures become SourceUnavailable."""
        try:
            return self._response.readinto(buffer)
        except TimeoutError:
            raise SourceUnavailable(504, f"registry {self._origin} stopped sending") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SourceUnavailable(502, f"registry {self._origin} broke off: {exc}") from None

    def abort(self) -> None:
        """From any thread: make a blocked ``readinto`` fail at once."""
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._connection.close()


def _check_span(response: http.client.HTTPResponse, span: tuple[int, int], url: str) -> None:
    """The answer to a range request holds exactly those bytes: a 206 for them, or a 200 with
    the whole blob when the range was all of it (some storage answers so)."""
    start, length = span
    if response.status == 206:
        content_range = response.getheader("Content-Range") or ""
        first = content_range.removeprefix("bytes ").split("-", 1)[0]
        if not content_range.startswith("bytes ") or first != str(start) or response.length != length:
            raise SourceUnavailable(502, f"upstream {url} answered bytes {start}+{length} with "
                                         f"{content_range or 'no Content-Range'}, {response.length} bytes")
    elif start != 0 or response.length != length:
        raise SourceUnavailable(502, f"upstream {url} ignored the range request")


def _refusal(status: int, headers: CIMultiDictProxy[str] | CIMultiDict[str], body: bytes,
             url: str) -> SourceRefused | SourceUnavailable:
    """A non-success answer: client errors pass back unchanged, server errors become 502."""
    if status >= 500:
        return SourceUnavailable(502, f"upstream {origin_of(url)} answered {status}")
    if status == 407:
        return _proxy_refused(url)
    picked = pick_headers(headers, ("Content-Type", "WWW-Authenticate", "Docker-Distribution-API-Version"))
    return SourceRefused(status, dict(picked), body)


def _proxy_refused(url: str) -> SourceUnavailable:
    """Our proxy's 407 is no answer for the client, which cannot give the proxy credentials."""
    return SourceUnavailable(502, f"the proxy to upstream {origin_of(url)} wants credentials (407): give them "
                                  "in the proxy variable as http://user:password@host:port")


def _close_unread(opened: "asyncio.Future[RegistryStream]") -> None:
    if not opened.cancelled() and opened.exception() is None:
        opened.result().close()


def _read_error_body(response: http.client.HTTPResponse) -> bytes:
    try:
        return response.read(ERROR_BODY_LIMIT)
    except (OSError, http.client.HTTPException):
        return b""


class RegistryClient:
    """Talks to upstream registries with the caller's credentials; every call has a deadline."""

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 60.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._openers = ThreadPoolExecutor(16, thread_name_prefix="registry-open")  # blocking connects, own pool
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

    @staticmethod
    def blob_url(origin: Origin, digest: Digest) -> str:
        return f"{origin.registry}/v2/{origin.repository}/blobs/{digest}"

    @staticmethod
    def _auth_headers(origin: Origin) -> dict[str, str]:
        headers = {"Accept": "*/*"}
        if origin.authorization:
            headers["Authorization"] = origin.authorization
        return headers

    async def request(self, method: str, url: str, headers: CIMultiDict[str], data: object = None,
                      follow_redirects: bool = True) -> aiohttp.ClientResponse:
        """Send one request (through the proxy the environment names for ``url``, if any);
        connection problems become SourceUnavailable (502/504)."""
        proxy = proxy_for(url, os.environ)
        via = {"proxy": without_credentials(proxy), "proxy_headers": proxy_authorization(proxy)} if proxy else {}
        try:
            response = await self.session.request(method, url, headers=headers, data=data,
                                                  allow_redirects=follow_redirects, max_redirects=MAX_REDIRECTS, **via)
        except asyncio.TimeoutError:
            raise SourceUnavailable(504, f"upstream {url} did not answer in time") from None
        except aiohttp.TooManyRedirects:
            raise SourceUnavailable(502, f"upstream {url} redirected too many times") from None
        except aiohttp.ClientError as exc:
            raise SourceUnavailable(502, f"cannot reach upstream {url}: {exc}") from None
        if response.status == 407 and proxy:
            response.release()
            raise _proxy_refused(url)
        return response

    async def _refusal(self, response: aiohttp.ClientResponse) -> SourceRefused | SourceUnavailable:
        try:
            body = await response.content.read(ERROR_BODY_LIMIT)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            body = b""
        finally:
            response.release()
        return _refusal(response.status, response.headers, body, str(response.url))

    async def open_blob(self, origin: Origin, digest: Digest, span: tuple[int, int] | None = None) -> RegistryStream:
        """GET the blob, or ``span`` (start, length) of it, on a blocking connection (redirects
        followed); its body is read on a thread."""
        headers = self._auth_headers(origin)
        if span is not None:
            headers["Range"] = f"bytes={span[0]}-{span[0] + span[1] - 1}"
        opening = asyncio.get_running_loop().run_in_executor(
            self._openers, self._open_blob, self.blob_url(origin, digest), headers, span)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:  # nobody will read it: close the stream once it opens
            opening.add_done_callback(_close_unread)
            raise

    def _open_blob(self, url: str, headers: dict[str, str], span: tuple[int, int] | None) -> RegistryStream:
        for _ in range(MAX_REDIRECTS + 1):
            route = Route(url, proxy_for(url, os.environ))
            try:
                connection = route.connection(self._connect_timeout, self._read_timeout)
            except http.client.HTTPException as exc:
                raise SourceUnavailable(502, f"cannot reach upstream {url}: {exc}") from None
            try:
                try:
                    connection.request("GET", route.target(), headers={**headers, **route.headers()})
                    response = connection.getresponse()
                except TimeoutError:
                    raise SourceUnavailable(504, f"upstream {url} did not answer in time") from None
                except (OSError, http.client.HTTPException) as exc:
                    raise SourceUnavailable(502, f"cannot reach upstream {url}: {exc}") from None
                location = response.getheader("Location")
                if response.status == 200 or (span is not None and response.status == 206):
                    if response.length is None:
                        raise SourceUnavailable(502, f"upstream {url} sent no Content-Length for a blob")
                    if span is not None:
                        _check_span(response, span, url)
                    return RegistryStream(connection, response, url, response.length)
                if response.status not in REDIRECTS or not location:
                    raise _refusal(response.status, CIMultiDict(response.getheaders()), _read_error_body(response),
                                   url)
            except BaseException:
                connection.close()
                raise
            connection.close()
            target = urljoin(url, location)
            if origin_of(target) != origin_of(url):
                headers = {k: v for k, v in headers.items() if k != "Authorization"}  # not for storage hosts
            url = target
        raise SourceUnavailable(502, f"upstream {url} redirected too many times")

    async def blob_length(self, origin: Origin, digest: Digest) -> int:
        """HEAD the blob with the caller's credentials: its length, or the registry's refusal."""
        url = self.blob_url(origin, digest)
        response = await self.request("HEAD", url, CIMultiDict(self._auth_headers(origin)))
        if response.status != 200:
            raise await self._refusal(response)
        response.release()
        if response.content_length is None:
            raise SourceUnavailable(502, f"upstream {url} sent no Content-Length for a blob")
        return response.content_length
