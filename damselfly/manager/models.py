"""The manager API's requests and answers, as pydantic models (pure: no I/O).

Every request model forbids unknown fields, so a typo is a 400 rather than a silently
ignored setting, and bounds every string, list and number: what passes validation can be
stored in SQLite and PostgreSQL alike (no NUL characters, no integer past 64 bits, no
date a time zone would push past year 9999). The OpenAPI document is generated from these
models (damselfly.manager.routes), so the schema a client reads is the rule the server applies.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema

from damselfly.core.oci import Digest, ImageRef, OCIError

MAX_INT64 = (1 << 63) - 1
MAX_ID = (1 << 31) - 1  # ids are INTEGER columns: 32 bits in PostgreSQL
MAX_BODY_LIST = 1000  # entries of a block list or of a scope's CIDRs
PASSWORD_MIN = 12
PASSWORD_MAX = 1024

# No control characters anywhere: PostgreSQL refuses NUL in text, and a log line or a
# table cell with a newline in it misleads whoever reads it.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
Text = Annotated[str, StringConstraints(max_length=255, pattern=_PRINTABLE)]
Url = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://[^\x00-\x20\x7f]+$")]
Password = Annotated[str, StringConstraints(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
Count = Annotated[int, Field(ge=0, le=MAX_INT64)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]

Role = Literal["root", "guest"]
Scope = Literal["cluster", "job"]
ComponentKind = Literal["scheduler", "seed-peer", "peer"]
State = Literal["active", "inactive"]


def _utc(value: datetime) -> datetime:
    """An aware time in UTC; a ValueError (so a 400) when the conversion leaves the calendar."""
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("the time is out of range") from None


UtcTime = Annotated[AwareDatetime, AfterValidator(_utc)]


def _ip(value: str) -> str:
    return str(ipaddress.ip_address(value))


def _cidr(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


def _blocked_item(value: str) -> str:
    """An image reference (``registry/repo:tag``, ``repo@digest``) or a bare digest."""
    try:
        Digest.parse(value)
    except OCIError:
        ImageRef.parse(value)  # its ValueError says what is wrong
    return value


IpAddress = Annotated[str, StringConstraints(max_length=64), AfterValidator(_ip)]
Cidr = Annotated[str, StringConstraints(max_length=64), AfterValidator(_cidr)]
BlockedItem = Annotated[str, StringConstraints(max_length=512, pattern=_PRINTABLE), AfterValidator(_blocked_item)]


def _omittable() -> Any:
    """A field of a patch that may be left out but not set to null: the schema shows neither
    null nor a default, and an explicit null fails when the patch is applied (a 400)."""
    def no_default(schema: dict[str, Any]) -> None:
        schema.pop("default", None)

    return Field(None, json_schema_extra=no_default)


class Request(BaseModel):
    """A request body or query: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class Answer(BaseModel):
    """A response body."""


class ErrorAnswer(Answer):
    """Every 4xx and 5xx: one line that says what went wrong."""

    error: str


# --- users and sign-in ------------------------------------------------------------------------------------------


class SignIn(Request):
    name: Annotated[str, StringConstraints(max_length=255)]
    password: Annotated[str, StringConstraints(max_length=PASSWORD_MAX)]


class SignInAnswer(Answer):
    token: str = Field(description="Send as `Authorization: Bearer <token>`.")
    expires_at: datetime


class UserCreate(Request):
    name: Name
    password: Password
    role: Role = "guest"


class UserUpdate(Request):
    password: Password | SkipJsonSchema[None] = _omittable()
    role: Role | SkipJsonSchema[None] = _omittable()


class User(Answer):
    id: int
    name: str
    role: Role
    created_at: datetime
    updated_at: datetime


# --- personal access tokens -------------------------------------------------------------------------------------


class TokenCreate(Request):
    name: Text = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(min_length=1, max_length=2)
    expires_at: UtcTime = Field(description="When the token stops working; must be in the future.")


class PersonalAccessToken(Answer):
    id: int
    name: str
    scopes: list[Scope]
    user_id: int
    user_name: str
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None


class CreatedToken(PersonalAccessToken):
    token: str = Field(description="Shown this once; only its hash is kept.")


# --- clusters ----------------------------------------------------------------------------------------------------


class ClusterConfig(Request):
    """What a cluster's schedulers and peers apply, fetched by them at each keepalive."""

    upload_rate: Annotated[int, Field(ge=1, le=MAX_INT64)] | None = Field(
        None, description="Upload bandwidth of each peer, bytes per second; null for no cap.")
    upload_slots: Annotated[int, Field(ge=1, le=4096)] | None = Field(
        None, description="Pieces a peer uploads at once; null keeps each peer's own setting.")
    candidate_parent_limit: int = Field(4, ge=1, le=64, description="Parents a scheduler offers a peer at once.")
    back_to_source: Annotated[int, Field(ge=0, le=MAX_INT64)] | None = Field(
        None, description="How many peers of one task may go to the origin; null for no limit.")
    block_list: list[BlockedItem] = Field(default_factory=list, max_length=MAX_BODY_LIST,
                                          description="Image references or digests that must not be served.")


class ClusterConfigPatch(Request):
    """The keys of a cluster's configuration to change; the others keep their values."""

    upload_rate: Annotated[int, Field(ge=1, le=MAX_INT64)] | None = None
    upload_slots: Annotated[int, Field(ge=1, le=4096)] | None = None
    candidate_parent_limit: Annotated[int, Field(ge=1, le=64)] | SkipJsonSchema[None] = _omittable()
    back_to_source: Annotated[int, Field(ge=0, le=MAX_INT64)] | None = None
    block_list: Annotated[list[BlockedItem], Field(max_length=MAX_BODY_LIST)] | SkipJsonSchema[None] = _omittable()


class ClusterScopes(Request):
    """Which hosts belong to the cluster; a cluster without any scope takes every host."""

    idc: Text | None = Field(None, description="Data centres, separated by `|`; a host in any of them matches.")
    location: Text | None = Field(None, description="A location prefix, `A|B`: matches hosts at `A|B` and below.")
    cidrs: list[Cidr] = Field(default_factory=list, max_length=MAX_BODY_LIST,
                              description="Networks; a host whose address is in one matches.")


class ClusterScopesPatch(Request):
    idc: Text | None = None
    location: Text | None = None
    cidrs: Annotated[list[Cidr], Field(max_length=MAX_BODY_LIST)] | SkipJsonSchema[None] = _omittable()


class ClusterCreate(Request):
    name: Name
    config: ClusterConfig = Field(default_factory=lambda: ClusterConfig.model_validate({}))
    scopes: ClusterScopes = Field(default_factory=lambda: ClusterScopes.model_validate({}))


class ClusterUpdate(Request):
    """Only the fields given change; in ``config`` and ``scopes``, only the keys given."""

    name: Name | SkipJsonSchema[None] = _omittable()
    config: ClusterConfigPatch | SkipJsonSchema[None] = _omittable()
    scopes: ClusterScopesPatch | SkipJsonSchema[None] = _omittable()


class ClusterConfigView(Answer):
    upload_rate: int | None
    upload_slots: int | None
    candidate_parent_limit: int
    back_to_source: int | None
    block_list: list[str]


class ClusterScopesView(Answer):
    idc: str | None
    location: str | None
    cidrs: list[str]


class Cluster(Answer):
    id: int
    name: str
    config: ClusterConfigView
    scopes: ClusterScopesView
    created_at: datetime
    updated_at: datetime


# --- components: schedulers, seed peers, peers --------------------------------------------------------------------


class ComponentRegistration(Request):
    kind: ComponentKind
    host_id: Text = Field(min_length=1)
    url: Url = Field(description="Where the component serves: a scheduler's API, a peer's upload server.")
    idc: Text | None = None
    location: Text | None = None
    cluster: Name | None = Field(None, description="Join this cluster, created with defaults if missing.")
    scheduler_url: Url | None = Field(None, description="Join the cluster of the scheduler at this URL.")
    ip: IpAddress | None = Field(None, description="The host's address for CIDR scopes; default: the caller's.")


class Keepalive(Request):
    uploaded_bytes: Count = 0
    served_bytes: Count = 0


class Registration(Answer):
    id: int
    cluster_id: int
    config: ClusterConfigView
    schedulers: list[str] = Field(description="URLs of the cluster's active schedulers.")
    keepalive_interval: float = Field(description="Seconds between keepalives.")


class KeepaliveAnswer(Answer):
    config: ClusterConfigView
    schedulers: list[str]


class Component(Answer):
    id: int
    kind: ComponentKind
    cluster_id: int | None
    host_id: str
    url: str
    idc: str | None
    location: str | None
    ip: str | None
    state: State = Field(description="active while keepalives arrive; inactive once they stop (never deleted).")
    registered_at: datetime
    last_keepalive_at: datetime
    uploaded_bytes: int = Field(description="Bytes uploaded to other peers, as of the last keepalive.")
    served_bytes: int = Field(description="Bytes served to local clients, as of the last keepalive.")


class ComponentQuery(Request):
    cluster_id: Id | None = None
    state: State | None = None


# --- tasks ---------------------------------------------------------------------------------------------------------


class TaskQuery(Request):
    digest: Annotated[str, StringConstraints(max_length=200)] | None = None
    image: Annotated[str, StringConstraints(max_length=512)] | None = None
    plain_http: bool = Field(False, description="Reach the image's registry over plain HTTP.")
    cluster_id: Id | None = None


class TaskPeer(Answer):
    host_id: str
    upload_url: str | None
    pieces: int = Field(description="Pieces the peer holds.")
    piece_count: int | None = Field(description="Pieces of the whole blob, when known.")
    done: bool
    scheduler_url: str


class BlobLocation(Answer):
    digest: str
    peers: list[TaskPeer]


class SchedulerReport(Answer):
    url: str
    cluster_id: int | None
    error: str | None = Field(description="Why the scheduler gave no answer; null when it did.")


class TasksAnswer(Answer):
    image: str | None
    blobs: list[BlobLocation]
    schedulers: list[SchedulerReport]


# --- audit ---------------------------------------------------------------------------------------------------------


class AuditQuery(Request):
    limit: int = Field(100, ge=1, le=1000)
    before_id: Id | None = Field(None, description="Entries older than this one (the next page).")


class AuditEntry(Answer):
    id: int
    at: datetime
    actor: str = Field(description="A user's name, or a component's host id.")
    credential: str = Field(description="session, token <name>, certificate or loopback.")
    method: str
    path: str
    status: int
    address: str
    summary: str


# --- jobs ----------------------------------------------------------------------------------------------------------

HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")]
HeaderValue = Annotated[str, StringConstraints(max_length=8192, pattern=_PRINTABLE)]
Platform = Annotated[str, StringConstraints(pattern=r"^(all|[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?)$")]


class PreheatArgs(Request):
    """What to preheat and where. Credentials (username and password, or headers) serve the
    manager and the seed peers for this job only: never stored, returned or logged."""

    type: Literal["image", "file"]
    url: Annotated[str, StringConstraints(min_length=1, max_length=2048, pattern=r"^[^\x00-\x20\x7f]+$")]
    platform: Platform = Field("all", description="os/arch[/variant] of an index, or all (every platform it lists).")
    scope: Literal["single_seed_peer", "all_seed_peers", "all_peers"] = "single_seed_peer"
    count: Annotated[int, Field(ge=1, le=MAX_ID)] | None = Field(None, description="all_peers: at most this many peers.")
    percentage: Annotated[int, Field(ge=1, le=100)] | None = Field(None, description="all_peers: this share of peers.")
    ips: list[IpAddress] = Field(default_factory=list, max_length=MAX_BODY_LIST,
                                 description="all_peers: only peers at these addresses.")
    headers: dict[HeaderName, HeaderValue] = Field(default_factory=dict, max_length=32)
    username: Annotated[str, StringConstraints(max_length=255, pattern=_PRINTABLE)] = ""
    password: Annotated[str, StringConstraints(max_length=PASSWORD_MAX, pattern=_PRINTABLE)] = ""
    timeout: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = Field(3600, description="Seconds until it fails.")
    digest: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="A file preheat's digest (task ids are digests).")

    @property
    def private(self) -> bool:
        return bool(self.username or self.password or self.headers)


class JobCreate(Request):
    type: Literal["preheat"]
    cluster_ids: list[Id] = Field(default_factory=list, max_length=MAX_BODY_LIST,
                                  description="The clusters to preheat in; empty: every cluster.")
    args: PreheatArgs


class JobArgsView(Answer):
    """A job's arguments as the API shows them: without credentials."""

    type: str
    url: str
    platform: str
    scope: str
    count: int | None
    percentage: int | None
    ips: list[str]
    timeout: int
    digest: str | None
    private: bool = Field(description="Credentials were given (they are never shown).")


class JobHost(Answer):
    host_id: str
    state: Literal["pending", "fetching", "done", "failed"]
    error: str | None


class JobBlob(Answer):
    digest: str
    size: int
    kind: Literal["manifest", "blob"]
    cluster_id: int
    hosts: list[JobHost]


class Job(Answer):
    id: int
    type: str
    state: Literal["PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED"]
    cluster_ids: list[int]
    args: JobArgsView
    created_by: str
    created_at: datetime
    updated_at: datetime
    error: str | None
    blobs: list[JobBlob]


class JobQuery(Request):
    state: Literal["PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED"] | None = None
    limit: int = Field(100, ge=1, le=1000)
