"""HTTP client for upstream registries: blob downloads, access checks and passthrough."""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

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


def pick_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str], names: tuple[str, ...]) -> CIMultiDict[str]:
    picked: CIMultiDict[str] = CIMultiDict()
    for name in names:
        for value in headers.getall(name, []):
            picked.add(name, value)
    return picked


class RegistryStream:
    """A blob download from a registry, read in chunks as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse, length: int) -> None:
        self._response = response
        self.length = length

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():  # no re-chunking copies
                yield chunk
        except asyncio.TimeoutError:
            raise SourceUnavailable(504, f"registry {self._response.url.origin()} stopped sending") from None
        except aiohttp.ClientError as exc:
            raise SourceUnavailable(502, f"registry {self._response.url.origin()} broke off: {exc}") from None

    def close(self) -> None:
        self._response.release()


class RegistryClient:
    """Talks to upstream registries with the caller's credentials; every call has a deadline."""

    def __init__(self, connect_timeout: float = 10.0, read_timeout: float = 60.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                auto_decompress=False,  # bytes pass through exactly as the registry sent them
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=60),
                read_bufsize=CHUNK_SIZE,  # fewer, larger reads on the hot path
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

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
        """Send one request; connection problems become SourceUnavailable (502/504)."""
        try:
            return await self.session.request(method, url, headers=headers, data=data,
                                              allow_redirects=follow_redirects, max_redirects=10)
        except asyncio.TimeoutError:
            raise SourceUnavailable(504, f"upstream {url} did not answer in time") from None
        except aiohttp.TooManyRedirects:
            raise SourceUnavailable(502, f"upstream {url} redirected too many times") from None
        except aiohttp.ClientError as exc:
            raise SourceUnavailable(502, f"cannot reach upstream {url}: {exc}") from None

    async def _refusal(self, response: aiohttp.ClientResponse) -> SourceRefused | SourceUnavailable:
        """A non-success answer: client errors pass back unchanged, server errors become 502."""
        try:
            body = await response.content.read(ERROR_BODY_LIMIT)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            body = b""
        finally:
            response.release()
        if response.status >= 500:
            return SourceUnavailable(502, f"upstream {response.url.origin()} answered {response.status}")
        headers = pick_headers(response.headers, ("Content-Type", "WWW-Authenticate", "Docker-Distribution-API-Version"))
        return SourceRefused(response.status, dict(headers), body)

    async def open_blob(self, origin: Origin, digest: Digest) -> RegistryStream:
        url = self.blob_url(origin, digest)
        response = await self.request("GET", url, CIMultiDict(self._auth_headers(origin)))
        if response.status != 200:
            raise await self._refusal(response)
        if response.content_length is None:
            response.release()
            raise SourceUnavailable(502, f"upstream {url} sent no Content-Length for a blob")
        return RegistryStream(response, response.content_length)

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
