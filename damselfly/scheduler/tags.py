"""The cluster's memory of tags and manifests: what seeds resolved at their registries,
for nodes whose registry fails (see damselfly.mirror.app, ``_stale``).

A tag is not content-addressed: whoever writes its record decides which manifest a node
serves for it in an outage. So only seeds write (a seed certificate with TLS; on plain
HTTP, a host announced as a seed), and a seed writes only what it resolved at the
registry itself. Any member reads. Records live in the KV (Redis with --redis, shared by
the cluster's schedulers; this process without), with a TTL: a tag's is the ceiling of
the stale-tag TTL, so no node serves one older than it may. Credentials never come here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from typing import Any, Callable, TypeVar

from aiohttp import web

from damselfly.core.oci import registry_name
from damselfly.core.wire import (ManifestRecord, SeedInfo, TagConfirm, TagPublication, TagRecord, WireError,
                                 parse_task_id)
from damselfly.lib.kv import KV, KV_ERRORS
from damselfly.lib.serve import json_object
from damselfly.lib.tls import request_identity
from damselfly.scheduler.state import SchedulerState

log = logging.getLogger(__name__)
TAG_TTL = 24 * 3600.0  # the stale-tag TTL's ceiling: no node serves a tag resolved longer ago
MANIFEST_TTL = 7 * 24 * 3600.0  # a manifest never changes; its record lasts while seeds likely hold it
MEMBER_ROLES = ("peer", "seed")
MAX_RECORDS = 100_000  # without --redis: records this process keeps (the least recently written go)

Record = TypeVar("Record", TagRecord, ManifestRecord)


def tag_key(registry: str, repository: str, tag: str) -> str:
    return "damselfly:tag:" + hashlib.sha256(f"{registry}\0{repository}\0{tag}".encode()).hexdigest()


def manifest_key(registry: str, digest: str) -> str:
    return f"damselfly:manifest:{hashlib.sha256(registry.encode()).hexdigest()[:32]}:{digest}"


class TagBook:
    """The routes of tag and manifest records, and of the live seeds a node asks to confirm a tag."""

    def __init__(self, state: SchedulerState, kv: KV) -> None:
        self.state = state
        self.kv = kv

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/tags", self.publish)
        app.router.add_get("/api/v1/tags", self.tag)
        app.router.add_get("/api/v1/manifests/{digest}", self.manifest)
        app.router.add_get("/api/v1/seeds", self.seeds)

    def _publisher(self, request: web.Request, host_id: str) -> None:
        """403 unless ``host_id`` is a live seed and, with TLS, the caller's certificate is
        that seed's: a peer must not point a tag at a manifest of its choosing."""
        identity = request_identity(request)
        if identity is not None and (not identity.has_role("seed") or identity.name != host_id):
            raise web.HTTPForbidden(text=f"{identity.name} ({identity.role}) may not publish tags: seeds only")
        host = self.state.hosts.get(host_id)
        if host is None or not host.is_seed or not self.state.alive(host_id):
            raise web.HTTPForbidden(text=f"{host_id} is not a live seed: it may not publish tags")

    @staticmethod
    def _member(request: web.Request) -> None:
        identity = request_identity(request)
        if identity is not None and not any(identity.has_role(role) for role in MEMBER_ROLES):
            raise web.HTTPForbidden(text=f"{identity.name} ({identity.role}) is not a peer or a seed")

    async def publish(self, request: web.Request) -> web.Response:
        try:
            publication = TagPublication.from_json(await json_object(request))
        except WireError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        self._publisher(request, publication.host_id)
        record = publication.tag
        manifest = record.manifest
        if manifest.digest not in {kept.digest for kept in publication.manifests}:
            raise web.HTTPBadRequest(text=f"the tag's manifest {manifest.digest} is not among the manifests published")
        try:
            await self.kv.put(tag_key(manifest.registry, manifest.repository, record.tag),
                              json.dumps(record.to_json()).encode(), TAG_TTL)
            for kept in publication.manifests:  # each with its own signature (the tag's covers the tag)
                await self.kv.put(manifest_key(kept.registry, kept.digest), json.dumps(kept.to_json()).encode(),
                                  MANIFEST_TTL)
        except KV_ERRORS as exc:
            raise web.HTTPServiceUnavailable(text=f"the records could not be kept: {exc}") from None
        log.info("seed %s resolved %s/%s:%s as %s", publication.host_id, manifest.registry, manifest.repository,
                 record.tag, manifest.digest)
        return web.json_response({})

    async def tag(self, request: web.Request) -> web.Response:
        self._member(request)
        try:
            asked = TagConfirm.from_json({key: request.query.get(key, "") for key in ("registry", "repository", "tag")})
        except WireError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        found = await self._read(tag_key(asked.registry, asked.repository, asked.tag), TagRecord.from_json)
        if found is None:
            raise web.HTTPNotFound(text=f"no seed resolved {asked.registry}/{asked.repository}:{asked.tag}")
        return web.json_response(found.to_json())

    async def manifest(self, request: web.Request) -> web.Response:
        self._member(request)
        try:
            digest = parse_task_id(request.match_info["digest"])
            registry = registry_name(request.query.get("registry", ""))
        except (WireError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        found = await self._read(manifest_key(registry, digest), ManifestRecord.from_json)
        if found is None:
            raise web.HTTPNotFound(text=f"no seed keeps manifest {digest} of {registry}")
        return web.json_response(found.to_json())

    async def seeds(self, request: web.Request) -> web.Response:
        """The live seeds: where a node asks for a tag to be confirmed."""
        self._member(request)
        return web.json_response([SeedInfo(h.id, h.upload_url).to_json() for h in self.state.seeds()])

    async def _read(self, key: str, parse: Callable[[Any], Record]) -> Record | None:
        """The record under ``key``; None if there is none, or it cannot be read (dropped)."""
        try:
            value = await self.kv.get(key)
        except KV_ERRORS as exc:
            raise web.HTTPServiceUnavailable(text=f"the records cannot be read now: {exc}") from None
        if value is None:
            return None
        try:
            return parse(json.loads(value))
        except ValueError as exc:  # WireError included
            log.warning("dropped an unreadable record %s: %s", key, exc)
            with contextlib.suppress(*KV_ERRORS):
                await self.kv.delete(key)
            return None
