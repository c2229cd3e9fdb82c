"""The manager's route table and the OpenAPI 3.1 document built from it (pure).

Each endpoint is declared once, as a ``Route``: method, path, the models of its query,
body and answer, its success status, and who may call it. The aiohttp layer
(damselfly.manager.api) dispatches from the same table, so the document cannot drift from
what the server does, and a test can walk the document to check every operation's access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from damselfly.manager.models import MAX_ID, ErrorAnswer

API_PREFIX = "/api/v1"
SCHEMA_REF = "#/components/schemas/{model}"
ACCESS_EXTENSION = "x-damselfly-access"
SCOPE_EXTENSION = "x-damselfly-scope"
_PATH_PARAMETER = re.compile(r"\{([a-z_]+)\}")


class Access(str, Enum):
    """Who may call a route."""

    PUBLIC = "public"  # anyone: sign-in
    COMPONENT = "component"  # schedulers and peers: a cluster certificate, or loopback without TLS
    READ = "guest-read"  # any signed-in user or valid token
    ROOT = "root"  # a root user's session, or a token with the route's scope when it has one


@dataclass(frozen=True)
class Route:
    """One operation of the API. ``path`` is relative to /api/v1 and names its integer path
    parameters in braces; ``errors`` are the statuses it answers besides the ones every
    route of its kind may (see ``error_statuses``)."""

    method: str
    path: str
    handler: str  # the name of the ManagerService method; also the operationId
    summary: str
    access: Access
    answer: type[BaseModel] | None = None
    many: bool = False  # the answer is a JSON array of ``answer``
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    scope: str | None = None  # with Access.ROOT: the token scope that also admits
    errors: tuple[int, ...] = ()
    tag: str = ""

    @property
    def full_path(self) -> str:
        return API_PREFIX + self.path

    @property
    def path_parameters(self) -> list[str]:
        return _PATH_PARAMETER.findall(self.path)

    @property
    def writes(self) -> bool:
        return self.method != "GET"


@dataclass(frozen=True)
class _Schemas:
    """The JSON Schemas of every model the routes use, as references into components/schemas."""

    refs: dict[tuple[type[BaseModel], str], dict[str, Any]] = field(default_factory=dict)
    definitions: dict[str, Any] = field(default_factory=dict)


def _schemas(routes: list[Route]) -> _Schemas:
    wanted: list[tuple[type[BaseModel], Any]] = [(ErrorAnswer, "serialization")]
    for route in routes:
        if route.body is not None:
            wanted.append((route.body, "validation"))
        if route.answer is not None:
            wanted.append((route.answer, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(unique, ref_template=SCHEMA_REF)
    return _Schemas({(model, mode): schema for (model, mode), schema in refs.items()},  # type: ignore[misc]
                    dict(top.get("$defs", {})))


def error_statuses(route: Route) -> list[int]:
    """Every status besides success that ``route`` may answer with an ``ErrorAnswer``."""
    statuses = set(route.errors)
    if route.body is not None or route.query is not None:
        statuses.add(400)
    if route.body is not None:
        statuses.update((408, 413))
    if route.path_parameters:
        statuses.add(404)
    if route.access in (Access.READ, Access.ROOT):
        statuses.update((401, 403))
    if route.access is Access.COMPONENT:
        statuses.add(403)
    return sorted(statuses)


_REASONS = {400: "The request is malformed; the error says which field and why.",
            401: "No valid token: none sent, unknown, expired or revoked.",
            403: "The caller may not do this: a guest writing, a token outside its scopes, a component without "
                 "its certificate.",
            404: "No such object.",
            408: "The body did not arrive in time.",
            409: "It conflicts with what exists: a name taken, the last root user.",
            413: "The body is larger than the manager accepts.",
            429: "Too many failed sign-ins for this name or address; retry after Retry-After seconds.",
            502: "An upstream (the image's registry) could not be asked."}


def _parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True,
         "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}
        for name in route.path_parameters]
    if route.query is not None:
        query_schema = route.query.model_json_schema(ref_template=SCHEMA_REF)
        required = set(query_schema.get("required", ()))
        for name, prop in query_schema.get("properties", {}).items():
            parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                parameter["description"] = prop["description"]
            parameters.append(parameter)
    return parameters


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(route: Route, schemas: _Schemas) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": route.handler, "summary": route.summary,
                                 ACCESS_EXTENSION: route.access.value}
    if route.tag:
        operation["tags"] = [route.tag]
    if route.scope is not None:
        operation[SCOPE_EXTENSION] = route.scope
    operation["security"] = [] if route.access in (Access.PUBLIC, Access.COMPONENT) else [{"bearer": []}]
    parameters = _parameters(route, schemas)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True,
                                    "content": _json_content(schemas.refs[(route.body, "validation")])}
    success: dict[str, Any] = {"description": "OK" if route.status == 200 else
                               "Created" if route.status == 201 else "No content"}
    if route.answer is not None:
        one = schemas.refs[(route.answer, "serialization")]
        success["content"] = _json_content({"type": "array", "items": one} if route.many else one)
    responses: dict[str, Any] = {str(route.status): success}
    error_schema = schemas.refs[(ErrorAnswer, "serialization")]
    for status in error_statuses(route):
        responses[str(status)] = {"description": _REASONS.get(status, "Error."), "content": _json_content(error_schema)}
    operation["responses"] = responses
    return operation


def openapi_document(routes: list[Route], title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``; every model appears once under components/schemas."""
    schemas = _schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.full_path, {})[route.method.lower()] = _operation(route, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": schemas.definitions,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A sign-in token or a personal access token."}},
        },
    }
