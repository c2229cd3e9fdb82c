"""Preheat jobs as the manager, the schedulers and the hosts exchange them (pure: no I/O).

A job is resolved by the manager into what a pull needs (manifests with their bytes,
the tag's resolution, the config and layer blobs) and handed to a scheduler of each
cluster it names. The scheduler picks the hosts its scope names (``choose_hosts``) and
asks each for each blob; every host checks what it gets against its digest, so a
scheduler or a queue that lies can make a preheat fail, never place wrong bytes.
Credentials travel only sealed for one seed peer (see damselfly.lib.sealed).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal, Sequence
from urllib.parse import urlsplit

from damselfly.core.oci import Digest, OCIError, registry_name, validate_repository
from damselfly.lib.signed import Signature

JobState = Literal["PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED"]
JOB_STATES: tuple[JobState, ...] = ("PENDING", "RUNNING", "SUCCESS", "FAILURE", "CANCELLED")
FINAL_STATES: frozenset[str] = frozenset({"SUCCESS", "FAILURE", "CANCELLED"})
Scope = Literal["single_seed_peer", "all_seed_peers", "all_peers"]
SCOPES: tuple[Scope, ...] = ("single_seed_peer", "all_seed_peers", "all_peers")
HostState = Literal["pending", "fetching", "done", "failed"]
MAX_MANIFEST_BYTES = 4 << 20  # as the mirror keeps them
MAX_JOB_MANIFESTS = 256
MAX_ERROR = 1000  # characters of a reported error or host id
MAX_MEDIA_TYPE = 255
MAX_JOB_BLOBS = 1000  # an image has far fewer layers; the statement travels with every placement


class JobError(ValueError):
    """A job document that is not one; the message says which field and why."""


@dataclass(frozen=True)
class Blob:
    """A blob a pull needs: config, layer, nydus bootstrap or data blob."""

    digest: str
    size: int
    media_type: str = ""


@dataclass(frozen=True)
class Manifest:
    """A manifest or index a pull needs, with its bytes (which hash to ``digest``)."""

    digest: str
    media_type: str
    body: bytes

    def check(self) -> None:
        if len(self.body) > MAX_MANIFEST_BYTES:
            raise JobError(f"manifest {self.digest} is over {MAX_MANIFEST_BYTES} bytes")
        if "sha256:" + hashlib.sha256(self.body).hexdigest() != self.digest:
            raise JobError(f"manifest {self.digest}: its bytes do not hash to its digest")


@dataclass(frozen=True)
class Selection:
    """Which hosts a job goes to: ``scope``, narrowed for all_peers by ``ips`` (hosts whose
    upload address is one of them), then ``count`` or ``percentage`` of the peers."""

    scope: Scope = "single_seed_peer"
    count: int | None = None
    percentage: int | None = None
    ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Statement:
    """What the manager resolved and signs: the only source a host takes a preheat's
    registry, repository, privacy, tags and digests from (see damselfly.lib.signed)."""

    job_id: int
    registry: str  # the registry's name, as peers name it in seed triggers
    repository: str
    private: bool
    deadline: float  # seconds since the epoch: a host refuses the statement after it
    tags: dict[str, str]  # tag of ``repository``: the digest it resolved to
    manifests: dict[str, str]  # digest: the media type it is served with
    blobs: dict[str, int]  # digest: size

    @property
    def total_bytes(self) -> int:
        return sum(self.blobs.values())

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "registry": self.registry, "repository": self.repository,
                "private": self.private, "deadline": self.deadline, "tags": dict(self.tags),
                "manifests": dict(self.manifests), "blobs": dict(self.blobs)}

    def credentials_context(self, host_id: str) -> str:
        """What a seed's sealed credentials are bound to: they open for this job, this host,
        this registry and repository, and this deadline only."""
        return f"preheat job {self.job_id} for {host_id} at {self.registry}/{self.repository} until {self.deadline!r}"

    def canonical(self) -> bytes:
        """The bytes that are signed: one encoding whoever computes them."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, document: Any) -> "Statement":
        try:
            doc = _object(document, "statement")
            private = doc["private"]
            if not isinstance(private, bool):
                raise JobError("private: not a boolean")
            deadline = doc["deadline"]
            if not isinstance(deadline, (int, float)) or isinstance(deadline, bool):
                raise JobError("deadline: not a number")
            statement = cls(
                _int(doc["job_id"], "job_id"), _str(doc["registry"], "registry"),
                _str(doc["repository"], "repository"), private, float(deadline),
                {_str(t, "tag"): _digest(d) for t, d in _object(doc["tags"], "tags").items()},
                {_digest(d): _str(t, "media_type")[:MAX_MEDIA_TYPE] for d, t in _object(doc["manifests"],
                                                                                       "manifests").items()},
                {_digest(d): _int(n, "size") for d, n in _object(doc["blobs"], "blobs").items()})
            if len(statement.blobs) > MAX_JOB_BLOBS:
                raise JobError(f"blobs: more than {MAX_JOB_BLOBS}")
            if len(statement.tags) > MAX_JOB_MANIFESTS or len(statement.manifests) > MAX_JOB_MANIFESTS:
                raise JobError(f"tags: more than {MAX_JOB_MANIFESTS}")
            validate_repository(statement.repository)
            registry_name(statement.registry)
        except KeyError as missing:
            raise JobError(f"statement: {missing.args[0]} is missing") from None
        except OCIError as error:
            raise JobError(f"statement: {error.message}") from None
        for tag, digest in statement.tags.items():
            if digest not in statement.manifests:
                raise JobError(f"tag {tag} points at {digest}, which is not among the manifests")
        return statement


@dataclass(frozen=True)
class SignedStatement:
    statement: Statement
    signature: Signature

    def to_json(self) -> dict[str, Any]:
        return {"statement": self.statement.to_json(),
                "signature": {"kind": self.signature.kind, "value": self.signature.value,
                              "certificate": self.signature.certificate}}

    @classmethod
    def from_json(cls, document: Any) -> "SignedStatement":
        doc = _object(document, "signed statement")
        try:
            signature = _object(doc["signature"], "signature")
            return cls(Statement.from_json(doc["statement"]),
                       Signature(_str(signature["kind"], "kind"), _str(signature["value"], "signature"),
                                 _str(signature.get("certificate", ""), "certificate")))
        except KeyError as missing:
            raise JobError(f"signed statement: {missing.args[0]} is missing") from None


@dataclass(frozen=True)
class PreheatJob:
    """What a scheduler's worker gets: the signed statement, the manifests' bytes, where
    to place them, and ``sealed``: a seed peer's host id -> the credentials sealed for it."""

    id: int
    cluster_id: int
    signed: SignedStatement
    manifests: tuple[Manifest, ...]
    selection: Selection
    sealed: dict[str, str] = field(default_factory=dict)

    @property
    def statement(self) -> Statement:
        return self.signed.statement

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "cluster_id": self.cluster_id, "signed": self.signed.to_json(),
            "manifests": [{"digest": m.digest, "media_type": m.media_type,
                           "body": base64.b64encode(m.body).decode()} for m in self.manifests],
            "selection": {"scope": self.selection.scope, "count": self.selection.count,
                          "percentage": self.selection.percentage, "ips": list(self.selection.ips)},
            "sealed": dict(self.sealed),
        }

    @classmethod
    def from_json(cls, document: Any) -> "PreheatJob":
        """JobError for anything but a job this module wrote (a queue is not trusted to be sane;
        the hosts check the signature)."""
        try:
            doc = _object(document, "job")
            selection = _object(doc["selection"], "selection")
            scope = selection["scope"]
            if scope not in SCOPES:
                raise JobError(f"scope: {scope!r} is not one of {', '.join(SCOPES)}")
            job = cls(
                id=_int(doc["id"], "id"), cluster_id=_int(doc["cluster_id"], "cluster_id"),
                signed=SignedStatement.from_json(doc["signed"]),
                manifests=tuple(_manifest(m) for m in _list(doc["manifests"], "manifests", MAX_JOB_MANIFESTS)),
                selection=Selection(scope, _optional_int(selection.get("count"), "count"),
                                    _optional_int(selection.get("percentage"), "percentage"),
                                    tuple(_str(ip, "ip") for ip in _list(selection.get("ips", []), "ips", 10_000))),
                sealed={_str(k, "host id"): _str(v, "sealed") for k, v in _object(doc.get("sealed", {}), "sealed").items()},
            )
        except KeyError as missing:
            raise JobError(f"job: {missing.args[0]} is missing") from None
        except (TypeError, ValueError) as error:
            if isinstance(error, JobError):
                raise
            raise JobError(f"job: {error}") from None
        if job.statement.job_id != job.id:
            raise JobError(f"job {job.id} carries the statement of job {job.statement.job_id}")
        if {m.digest for m in job.manifests} != set(job.statement.manifests):
            raise JobError("the job's manifests are not the ones its statement names")
        if any(job.statement.manifests[m.digest] != m.media_type for m in job.manifests):
            raise JobError("the job's manifests are not of the media types its statement names")
        return job


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise JobError(f"{what}: not an object")
    return value


def _list(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise JobError(f"{what}: not a list")
    if len(value) > limit:
        raise JobError(f"{what}: more than {limit}")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise JobError(f"{what}: not a string")
    return value


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JobError(f"{what}: not a count")
    return value


def _optional_int(value: Any, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _digest(value: Any) -> str:
    try:
        return str(Digest.parse(_str(value, "digest")))
    except OCIError as error:
        raise JobError(f"digest: {error.message}") from None


def _manifest(value: Any) -> Manifest:
    doc = _object(value, "manifest")
    manifest = Manifest(_digest(doc["digest"]), _str(doc["media_type"], "media_type"),
                        base64.b64decode(_str(doc["body"], "body"), validate=True))
    manifest.check()
    return manifest


# -- where a job goes ----------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """A live host as the scheduler knows it."""

    host_id: str
    upload_url: str
    is_seed: bool
    load: int = 0  # uploads in flight: the least loaded seed is picked first

    @property
    def ip(self) -> str:
        return urlsplit(self.upload_url).hostname or ""


def choose_hosts(selection: Selection, members: Iterable[Member]) -> tuple[list[Member], list[Member]]:
    """(seeds, peers) a job goes to. Every scope fills seeds first: with all_peers the
    peers then get each blob from them, never from the registry.

    single_seed_peer: the least loaded seed; all_seed_peers: every seed; all_peers: every
    seed, and the peers that ``ips`` names (all if none), then the first ``count`` or
    ``percentage`` of them (rounded up) by host id, so that a retry picks the same hosts.
    """
    hosts = sorted(members, key=lambda m: m.host_id)
    seeds = [m for m in hosts if m.is_seed]
    if selection.scope == "single_seed_peer":
        return sorted(seeds, key=lambda m: (m.load, m.host_id))[:1], []
    if selection.scope == "all_seed_peers":
        return seeds, []
    peers = [m for m in hosts if not m.is_seed]
    if selection.ips:
        wanted = {_normal_ip(ip) for ip in selection.ips}
        peers = [m for m in peers if _normal_ip(m.ip) in wanted]
    if selection.count is not None:
        peers = peers[:selection.count]
    elif selection.percentage is not None:
        peers = peers[:math.ceil(len(peers) * selection.percentage / 100)]
    return seeds, peers


def _normal_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return text


# -- progress ------------------------------------------------------------------------

@dataclass(frozen=True)
class HostProgress:
    host_id: str
    state: HostState
    error: str | None = None


@dataclass(frozen=True)
class BlobProgress:
    digest: str
    size: int
    kind: Literal["manifest", "blob"] = "blob"
    hosts: tuple[HostProgress, ...] = ()

    def with_host(self, host: HostProgress) -> "BlobProgress":
        others = tuple(h for h in self.hosts if h.host_id != host.host_id)
        return replace(self, hosts=(*others, host))


@dataclass(frozen=True)
class JobProgress:
    """What a worker reports about one cluster's part of a job."""

    state: JobState
    blobs: tuple[BlobProgress, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "error": self.error,
                "blobs": [{"digest": b.digest, "size": b.size, "kind": b.kind,
                           "hosts": [{"host_id": h.host_id, "state": h.state, "error": h.error} for h in b.hosts]}
                          for b in self.blobs]}

    @classmethod
    def from_json(cls, document: Any) -> "JobProgress":
        try:
            doc = _object(document, "progress")
            state = doc["state"]
            if state not in JOB_STATES:
                raise JobError(f"state: {state!r}")
            blobs = []
            for entry in _list(doc.get("blobs", []), "blobs", MAX_JOB_BLOBS + MAX_JOB_MANIFESTS):
                entry = _object(entry, "blob")
                kind = entry.get("kind", "blob")
                hosts = tuple(HostProgress(_str(h["host_id"], "host_id")[:MAX_ERROR], h["state"],
                                           _short_text(h.get("error")))
                              for h in (_object(x, "host") for x in _list(entry.get("hosts", []), "hosts", 100_000))
                              if h.get("state") in ("pending", "fetching", "done", "failed"))
                blobs.append(BlobProgress(_digest(entry["digest"]), _int(entry["size"], "size"),
                                          "manifest" if kind == "manifest" else "blob", hosts))
            return cls(state, tuple(blobs), _short_text(doc.get("error")))
        except KeyError as missing:
            raise JobError(f"progress: {missing.args[0]} is missing") from None


def _short_text(value: Any) -> str | None:
    """A reported error as one bounded line of text (None for anything that is not text)."""
    return " ".join(value.split())[:MAX_ERROR] if isinstance(value, str) else None


def overall_state(parts: Sequence[JobState]) -> JobState:
    """A job's state from its clusters' parts: FAILURE or CANCELLED if any part ended so,
    SUCCESS once every part did, RUNNING once any started, else PENDING."""
    if not parts:
        return "PENDING"
    for final in ("CANCELLED", "FAILURE"):
        if final in parts and all(p in FINAL_STATES for p in parts):
            return final
    if all(p == "SUCCESS" for p in parts):
        return "SUCCESS"
    if any(p != "PENDING" for p in parts):
        return "RUNNING"
    return "PENDING"


def missing_summary(progress: JobProgress) -> str:
    """One line: which blobs no host in scope holds yet, for a job that ran out of time."""
    missing = [b for b in progress.blobs if not b.hosts or any(h.state != "done" for h in b.hosts)]
    if not missing:
        return "nothing missing"
    shown = ", ".join(f"{b.digest[:19]}… on {sum(h.state != 'done' for h in b.hosts) or 'no'} hosts"
                      for b in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"{len(missing)} of {len(progress.blobs)} not placed: {shown}{more}"


# -- what a scheduler asks of a host ---------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """POST {upload_url}/api/v1/preheat/blobs/{digest} (scheduler certificates only): hold
    this blob of the signed statement, answering once it is stored. ``credentials``: for a
    seed of a private image, the job's credentials sealed for this host."""

    signed: SignedStatement
    credentials: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"signed": self.signed.to_json(), "credentials": self.credentials}

    @classmethod
    def from_json(cls, document: Any) -> "Placement":
        doc = _object(document, "placement")
        credentials = doc.get("credentials")
        if "signed" not in doc:
            raise JobError("placement: signed is missing")
        return cls(SignedStatement.from_json(doc["signed"]),
                   None if credentials is None else _str(credentials, "credentials"))


@dataclass(frozen=True)
class ManifestPlacement:
    """POST {upload_url}/api/v1/preheat/manifests: keep the statement's manifests, and its
    tags' resolutions, for a pull while the registry is down. The host checks each body
    against its digest, and that the signed statement names it."""

    signed: SignedStatement
    manifests: tuple[Manifest, ...]

    def to_json(self) -> dict[str, Any]:
        return {"signed": self.signed.to_json(),
                "manifests": [{"digest": m.digest, "media_type": m.media_type,
                               "body": base64.b64encode(m.body).decode()} for m in self.manifests]}

    @classmethod
    def from_json(cls, document: Any) -> "ManifestPlacement":
        try:
            doc = _object(document, "manifests")
            placement = cls(SignedStatement.from_json(doc["signed"]),
                            tuple(_manifest(m) for m in _list(doc["manifests"], "manifests", MAX_JOB_MANIFESTS)))
        except KeyError as missing:
            raise JobError(f"manifests: {missing.args[0]} is missing") from None
        except ValueError as error:  # binascii.Error included
            if isinstance(error, JobError):
                raise
            raise JobError(f"manifests: {error}") from None
        named = placement.signed.statement.manifests
        for manifest in placement.manifests:
            if named.get(manifest.digest) != manifest.media_type:
                raise JobError(f"manifest {manifest.digest} ({manifest.media_type}) is not one the statement names")
        return placement
