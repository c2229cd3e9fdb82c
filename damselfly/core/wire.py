"""The messages between peers, seeds and the scheduler, and their validation (pure).

Every message is a frozen dataclass with ``to_json()`` and ``from_json(obj)``. Parsing is
strict, because every field comes from another host: an int field rejects bool and str,
required strings are non-empty, identifiers and lists are bounded, and anything malformed
raises ``WireError`` with one line that a receiver answers with a 400. Unknown keys are
ignored, so that a sender one version ahead (or a client that adds its own keys, such as
an HTTP status) still parses. Free-text ``reason`` fields are information only: they are
cut to MAX_REASON characters rather than refused, so that a long error text never loses
the report that carries it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, cast, get_args

from damselfly.core.oci import OCIError, is_digest_reference, registry_name, validate_reference, validate_repository
from damselfly.lib.signed import Signature

# Piece API headers and limits, shared by the upload server and the piece fetcher.
PIECE_DIGEST_HEADER = "X-Piece-Digest"  # on a seed's relay answer (503): the digests of the pieces it points at
RECEIVER_HEADER = "X-Piece-Receiver"  # the asker's upload URL: a seed may send later askers there
RELAY_HEADER = "X-Piece-Relay"  # a seed's answer: get the piece from this peer, which has or is getting it
COUNT_HEADER = "X-Piece-Count"  # how many consecutive pieces a body carries (absent: one)
MAX_RUN_PIECES = 64  # the most pieces one request may ask for
# A piece body is each piece's bytes followed by its digest (a trailer), so that a parent
# can send a piece while it still arrives (from the origin, or from its own parent) and
# name its digest once it is whole here: ASCII, space-padded, newline-ended; blank when
# the sender has no digest to give (the asker must know it already).
PIECE_TRAILER_SIZE = 72
# The registry and repository whose access the asker's caller was confirmed for: pieces of
# a blob fetched with credentials go only to askers for the origin it was fetched from.
ORIGIN_HEADER = "X-Piece-Origin"

# Bounds of what a message may carry. MAX_PIECES covers 4 TiB at the largest piece length
# (64 MiB); a scheduler's own length cap is lower and checked there.
MAX_PIECES = 1 << 16
MAX_PARENTS = 64
MAX_SEEDS = 64
MAX_ID = 256
MAX_URL = 2048
MAX_TEXT = 256  # idc, location, epoch
MAX_REASON = 1024
MAX_AUTHORIZATION = 16 * 1024
MAX_UPLOAD_SLOTS = 4096
MAX_INT = (1 << 63) - 1

_TASK_ID = re.compile(r"sha256:[0-9a-f]{64}")
_PIECE_DIGEST = re.compile(r"(?:blake3:)?[0-9a-f]{64}")  # no prefix: SHA-256, from earlier versions
_INDEX = re.compile(r"[0-9]{1,6}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Action = Literal["download", "wait", "seed", "back_to_source", "fail", "done"]
ACTIONS: tuple[str, ...] = get_args(Action)


class WireError(ValueError):
    """A malformed message; the text is one line, fit for a 400 answer."""


def origin_key(registry: str, repository: str) -> str:
    """``host[:port]/repository`` of an upstream URL (or a registry name) and a repository:
    what two nodes compare to know they speak of the same registry's repository."""
    name = registry.split("://", 1)[-1].rstrip("/").lower()
    return f"{name}/{repository}"


def parse_number(text: str, low: int = -1, high: int = MAX_INT) -> int:
    """An integer in a path or query (a piece index, a count, a version): ASCII digits only,
    where ``int`` would take "١", "1_0", "+2" or spaces; WireError otherwise."""
    if not re.fullmatch(r"-?[0-9]{1,19}", text) or not low <= int(text) <= high:
        raise WireError(f"want an integer in {low}..{high}, not {_show(text)}")
    return int(text)


def piece_trailer(digest: str | None) -> bytes:
    """The trailer that follows a piece in a body (see PIECE_TRAILER_SIZE)."""
    text = (digest or "").encode("ascii")
    if len(text) >= PIECE_TRAILER_SIZE:
        raise ValueError(f"piece digest {digest!r} is longer than a trailer")
    return text.ljust(PIECE_TRAILER_SIZE - 1) + b"\n"


def parse_piece_trailer(data: bytes) -> str | None:
    """The digest a trailer names, None for a blank one; WireError for anything else."""
    text = data[:-1].rstrip(b" ")
    if len(data) != PIECE_TRAILER_SIZE or not data.endswith(b"\n") or not (
            text == b"" or _PIECE_DIGEST.fullmatch(text.decode("ascii", "replace"))):
        raise WireError(f"malformed piece trailer {_show(data.decode('ascii', 'replace'))}")
    return text.decode("ascii") or None


def run_body_length(sizes: Sequence[int]) -> int:
    """Bytes in a body carrying pieces of these sizes, each with its trailer."""
    return sum(sizes) + len(sizes) * PIECE_TRAILER_SIZE


def parse_task_id(text: str) -> str:
    """A task id is the blob's digest, ``sha256:<64 lowercase hex>``; anything else is refused."""
    if not isinstance(text, str) or not _TASK_ID.fullmatch(text):
        raise WireError(f"task id must be sha256:<64 lowercase hex>, not {_show(text)}")
    return text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_REQUIRED: Any = object()  # the default of a field that must be present


class _Fields:
    """Typed reads of one JSON object's fields; every failure names the message and field."""

    def __init__(self, message: str, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise WireError(f"{message}: expected a JSON object, not {_kind(obj)}")
        self.message, self.obj = message, obj

    def fail(self, key: str, why: str) -> WireError:
        return WireError(f"{self.message}: field {key!r} {why}")

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.obj:
            if default is _REQUIRED:
                raise WireError(f"{self.message}: missing field {key!r}")
            return default
        return self.obj[key]

    def text(self, key: str, default: Any = _REQUIRED, limit: int = MAX_ID, empty: bool = False) -> str:
        """A string without control characters, non-empty unless ``empty``."""
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {_kind(value)}")
        if not value and not empty:
            raise self.fail(key, "must not be empty")
        if len(value) > limit:
            raise self.fail(key, f"is longer than {limit} characters")
        if _CONTROL.search(value):
            raise self.fail(key, "contains control characters")
        return value

    def optional_text(self, key: str, limit: int = MAX_ID) -> str | None:
        return None if self.obj.get(key) is None else self.text(key, limit=limit)

    def reason(self, key: str = "reason") -> str:
        value = self._get(key, "")
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {_kind(value)}")
        return value[:MAX_REASON]

    def integer(self, key: str, default: Any = _REQUIRED, low: int = 0, high: int = MAX_INT) -> int:
        value = self._get(key, default)
        return _integer(value, low, high, lambda why: self.fail(key, why))

    def boolean(self, key: str, default: Any = _REQUIRED) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {_kind(value)}")
        return value

    def number(self, key: str) -> float:
        value = self._get(key, _REQUIRED)
        return _number(value, lambda why: self.fail(key, why))

    def array(self, key: str, limit: int) -> list[Any]:
        value = self._get(key, [])
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, not {_kind(value)}")
        if len(value) > limit:
            raise self.fail(key, f"has more than {limit} items")
        return value


def _integer(value: Any, low: int, high: int, fail: Callable[[str], WireError]) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise fail(f"must be an integer, not {_kind(value)}")
    if not low <= value <= high:
        raise fail(f"must be within {low}..{high}, not {value}")
    return value


def _number(value: Any, fail: Callable[[str], WireError]) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise fail(f"must be a number, not {_kind(value)}")
    if not math.isfinite(value) or value < 0:
        raise fail(f"must be a finite number >= 0, not {value}")
    return float(value)


def _piece_digest(value: Any, fail: Callable[[str], WireError]) -> str:
    if not isinstance(value, str) or not _PIECE_DIGEST.fullmatch(value):
        raise fail(f"must be a piece digest blake3:<64 hex>, not {_show(value)}")
    return value


def _url(fields: _Fields, key: str) -> str:
    value = fields.text(key, limit=MAX_URL)
    if not value.startswith(("http://", "https://")):
        raise fields.fail(key, f"must be an http(s) URL, not {_show(value)}")
    return value


# -- hosts -------------------------------------------------------------------------


@dataclass(frozen=True)
class HostAnnounce:
    """POST /api/v1/hosts: a host says it is alive and where it uploads."""

    id: str
    upload_url: str
    idc: str = ""
    location: str = ""
    seed: bool = False
    upload_slots: int = 16

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "upload_url": self.upload_url, "idc": self.idc, "location": self.location,
                "seed": self.seed, "upload_slots": self.upload_slots}

    @classmethod
    def from_json(cls, obj: Any) -> "HostAnnounce":
        f = _Fields("HostAnnounce", obj)
        return cls(id=f.text("id"), upload_url=_url(f, "upload_url"), idc=f.text("idc", "", MAX_TEXT, empty=True),
                   location=f.text("location", "", MAX_TEXT, empty=True), seed=f.boolean("seed", False),
                   upload_slots=f.integer("upload_slots", 16, low=1, high=MAX_UPLOAD_SLOTS))


@dataclass(frozen=True)
class AnnounceAnswer:
    """The scheduler's answer to HostAnnounce: how often to announce again."""

    keepalive_interval: float

    def to_json(self) -> dict[str, Any]:
        return {"keepalive_interval": self.keepalive_interval}

    @classmethod
    def from_json(cls, obj: Any) -> "AnnounceAnswer":
        return cls(_Fields("AnnounceAnswer", obj).number("keepalive_interval"))


# -- tasks -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskRegister:
    """POST /api/v1/tasks/{task_id}/register. Carries no origin and no credentials: the
    scheduler never sees a caller's credentials."""

    host_id: str
    length: int
    piece_length: int
    pieces: tuple[int, ...] = ()
    seeding: bool = False
    ranged: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "length": self.length, "piece_length": self.piece_length,
                "pieces": list(self.pieces), "seeding": self.seeding, "ranged": self.ranged}

    @classmethod
    def from_json(cls, obj: Any) -> "TaskRegister":
        f = _Fields("TaskRegister", obj)
        return cls(host_id=f.text("host_id"), length=f.integer("length"),
                   piece_length=f.integer("piece_length", low=1),
                   pieces=tuple(_integer(i, 0, MAX_PIECES - 1, lambda why: f.fail("pieces", f"item {why}"))
                                for i in f.array("pieces", MAX_PIECES)),
                   seeding=f.boolean("seeding", False), ranged=f.boolean("ranged", False))


@dataclass(frozen=True)
class ParentInfo:
    """A parent offered to a peer, with the pieces it holds (``bitmap``, base64 on the wire)."""

    host_id: str
    upload_url: str
    is_seed: bool
    seeding: bool
    bitmap: bytes

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "upload_url": self.upload_url, "is_seed": self.is_seed,
                "seeding": self.seeding, "bitmap": base64.b64encode(self.bitmap).decode()}

    @classmethod
    def from_json(cls, obj: Any) -> "ParentInfo":
        f = _Fields("ParentInfo", obj)
        encoded = f.text("bitmap", "", limit=4 * MAX_PIECES // 8 // 3 + 4, empty=True)
        try:
            bitmap = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise f.fail("bitmap", "is not base64") from None
        return cls(host_id=f.text("host_id"), upload_url=_url(f, "upload_url"), is_seed=f.boolean("is_seed"),
                   seeding=f.boolean("seeding"), bitmap=bitmap)


@dataclass(frozen=True)
class SeedInfo:
    """A seed a peer holding the trigger lease may ask to fetch the task."""

    host_id: str
    upload_url: str

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "upload_url": self.upload_url}

    @classmethod
    def from_json(cls, obj: Any) -> "SeedInfo":
        f = _Fields("SeedInfo", obj)
        return cls(host_id=f.text("host_id"), upload_url=_url(f, "upload_url"))


@dataclass(frozen=True)
class Schedule:
    """The scheduler's answer to register and to a schedule poll: what to do, from whom.

    "seed": nobody holds or fetches the task and this peer holds the trigger lease: it asks
    ``seeds`` in order (SeedTrigger) until one answers 202, reports TriggerFailed for each
    that does not, and goes back to source if none accepts.
    """

    action: Action
    reason: str = ""
    version: int = 0
    epoch: str = ""
    verified: bool = False
    swarm: int = 1
    digests: dict[int, str] = field(default_factory=dict)
    parents: tuple[ParentInfo, ...] = ()
    seeds: tuple[SeedInfo, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason[:MAX_REASON], "version": self.version,
                "epoch": self.epoch, "verified": self.verified, "swarm": self.swarm,
                "digests": {str(i): d for i, d in self.digests.items()},
                "parents": [p.to_json() for p in self.parents], "seeds": [s.to_json() for s in self.seeds]}

    @classmethod
    def from_json(cls, obj: Any) -> "Schedule":
        f = _Fields("Schedule", obj)
        action = f.text("action")
        if action not in ACTIONS:
            raise f.fail("action", f"must be one of {', '.join(ACTIONS)}, not {_show(action)}")
        raw = obj.get("digests", {})
        if not isinstance(raw, dict):
            raise f.fail("digests", f"must be an object, not {_kind(raw)}")
        if len(raw) > MAX_PIECES:
            raise f.fail("digests", f"has more than {MAX_PIECES} items")
        digests = {}
        for key, digest in raw.items():
            def fail(why: str, key: str = key) -> WireError:
                return f.fail("digests", f"item {_show(key)} {why}")

            if not _INDEX.fullmatch(key):
                raise fail("must be a piece index")
            digests[_integer(int(key), 0, MAX_PIECES - 1, fail)] = _piece_digest(digest, fail)
        return cls(action=cast(Action, action), reason=f.reason(), version=f.integer("version", 0),
                   epoch=f.text("epoch", "", MAX_TEXT, empty=True), verified=f.boolean("verified", False),
                   swarm=f.integer("swarm", 1), digests=digests,
                   parents=tuple(ParentInfo.from_json(p) for p in f.array("parents", MAX_PARENTS)),
                   seeds=tuple(SeedInfo.from_json(s) for s in f.array("seeds", MAX_SEEDS)))


@dataclass(frozen=True)
class PieceNews:
    """One piece a host now holds; on the wire a list ``[index, digest, cost, parent]``."""

    index: int
    digest: str | None = None
    cost: float | None = None  # seconds the transfer took
    parent: str | None = None  # the host it came from

    def to_json(self) -> list[Any]:
        return [self.index, self.digest, self.cost, self.parent]

    @classmethod
    def from_json(cls, obj: Any) -> "PieceNews":
        def fail(why: str) -> WireError:
            return WireError(f"PieceNews: {why}")

        if not isinstance(obj, list) or not 1 <= len(obj) <= 4:
            raise fail(f"expected a list [index, digest, cost, parent], not {_show(obj)}")
        index, digest, cost, parent = (*obj, None, None, None)[:4]
        if parent is not None and (not isinstance(parent, str) or not parent or len(parent) > MAX_ID
                                   or _CONTROL.search(parent)):
            raise fail(f"parent must be a host id or null, not {_show(parent)}")
        return cls(index=_integer(index, 0, MAX_PIECES - 1, lambda why: fail(f"index {why}")),
                   digest=None if digest is None else _piece_digest(digest, lambda why: fail(f"digest {why}")),
                   cost=None if cost is None else _number(cost, lambda why: fail(f"cost {why}")), parent=parent)


@dataclass(frozen=True)
class PieceReport:
    """POST /api/v1/tasks/{task_id}/pieces. Digests count only from hosts announced as seeds."""

    host_id: str
    pieces: tuple[PieceNews, ...]
    from_origin: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "pieces": [p.to_json() for p in self.pieces],
                "from_origin": self.from_origin}

    @classmethod
    def from_json(cls, obj: Any) -> "PieceReport":
        f = _Fields("PieceReport", obj)
        return cls(host_id=f.text("host_id"),
                   pieces=tuple(PieceNews.from_json(p) for p in f.array("pieces", MAX_PIECES)),
                   from_origin=f.boolean("from_origin", False))


@dataclass(frozen=True)
class PieceAnswer:
    """The scheduler's answer to PieceReport: pieces whose digest disagreed (ignored)."""

    rejected: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"rejected": list(self.rejected)}

    @classmethod
    def from_json(cls, obj: Any) -> "PieceAnswer":
        f = _Fields("PieceAnswer", obj)
        return cls(tuple(_integer(i, 0, MAX_PIECES - 1, lambda why: f.fail("rejected", f"item {why}"))
                         for i in f.array("rejected", MAX_PIECES)))


@dataclass(frozen=True)
class BadParentReport:
    """POST /api/v1/tasks/{task_id}/bad-parent: a parent failed this host (by id, or by the
    upload URL a seed pointed at)."""

    host_id: str
    parent_id: str | None = None
    parent_url: str | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "parent_id": self.parent_id, "parent_url": self.parent_url,
                "reason": self.reason[:MAX_REASON]}

    @classmethod
    def from_json(cls, obj: Any) -> "BadParentReport":
        f = _Fields("BadParentReport", obj)
        parent_id = f.optional_text("parent_id")
        parent_url = None if obj.get("parent_url") is None else _url(f, "parent_url")
        if parent_id is None and parent_url is None:
            raise WireError("BadParentReport: needs parent_id or parent_url")
        return cls(host_id=f.text("host_id"), parent_id=parent_id, parent_url=parent_url, reason=f.reason())


@dataclass(frozen=True)
class TriggerFailed:
    """POST /api/v1/tasks/{task_id}/trigger-failed: a seed did not accept this host's SeedTrigger."""

    host_id: str
    seed_id: str
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "seed_id": self.seed_id, "reason": self.reason[:MAX_REASON]}

    @classmethod
    def from_json(cls, obj: Any) -> "TriggerFailed":
        f = _Fields("TriggerFailed", obj)
        return cls(host_id=f.text("host_id"), seed_id=f.text("seed_id"), reason=f.reason())


@dataclass(frozen=True)
class DoneReport:
    """POST /api/v1/tasks/{task_id}/done: this host's task ended.

    ``digest_mismatch``: the blob assembled from pieces that matched the scheduler's piece
    digests failed its whole-blob check: the digests' sources lied (or the origin did).
    """

    host_id: str
    success: bool
    reason: str = ""
    could_not_start: bool = False
    digest_mismatch: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "success": self.success, "reason": self.reason[:MAX_REASON],
                "could_not_start": self.could_not_start, "digest_mismatch": self.digest_mismatch}

    @classmethod
    def from_json(cls, obj: Any) -> "DoneReport":
        f = _Fields("DoneReport", obj)
        return cls(host_id=f.text("host_id"), success=f.boolean("success"), reason=f.reason(),
                   could_not_start=f.boolean("could_not_start", False),
                   digest_mismatch=f.boolean("digest_mismatch", False))


# -- seeds -------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedTrigger:
    """POST {seed upload_url}/api/v1/seed/{digest}: a peer asks a seed to fetch a task from
    its origin, with the peer's own credentials (mutual TLS, seeds only).

    ``registry`` is a NAME (host[:port]), never a URL: the seed maps it with its own
    registry map, so that a caller cannot point a seed at an address of its choosing.
    """

    length: int
    piece_length: int
    registry: str
    repository: str
    ranged: bool = False
    authorization: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"length": self.length, "piece_length": self.piece_length, "ranged": self.ranged,
                "registry": self.registry, "repository": self.repository, "authorization": self.authorization}

    @classmethod
    def from_json(cls, obj: Any) -> "SeedTrigger":
        f = _Fields("SeedTrigger", obj)
        registry, repository = _registry_and_repository(f)
        return cls(length=f.integer("length"), piece_length=f.integer("piece_length", low=1), registry=registry,
                   repository=repository, ranged=f.boolean("ranged", False),
                   authorization=f.optional_text("authorization", MAX_AUTHORIZATION))


@dataclass(frozen=True)
class SeedAccepted:
    """A seed's 202 answer to SeedTrigger."""

    accepted: str

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted}

    @classmethod
    def from_json(cls, obj: Any) -> "SeedAccepted":
        return cls(parse_task_id(_Fields("SeedAccepted", obj).text("accepted")))



# -- the cluster's tags and manifests ------------------------------------------------

MAX_MEDIA_TYPE = 255
MAX_CERTIFICATE = 8192
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what registries take (distribution spec); none larger is recorded
MAX_INDEX_CHILDREN = 64  # an index's child manifests a seed keeps and records with it


def _registry_and_repository(f: _Fields) -> tuple[str, str]:
    registry = f.text("registry")
    try:
        registry_name(registry)
    except ValueError:
        raise f.fail("registry", f"must be a registry name host[:port], not {_show(registry)}") from None
    repository = f.text("repository")
    try:
        validate_repository(repository)
    except OCIError as exc:
        raise f.fail("repository", exc.message) from None
    return registry, repository


def _tag(f: _Fields) -> str:
    tag = f.text("tag")
    try:
        validate_reference(tag)
    except OCIError as exc:
        raise f.fail("tag", exc.message) from None
    if is_digest_reference(tag):
        raise f.fail("tag", "must be a tag, not a digest")
    return tag


@dataclass(frozen=True)
class ManifestRecord:
    """A manifest a seed fetched from its registry and holds as a blob of the manifest's
    digest: a node without it fetches ``size`` bytes through P2P and checks them against
    ``digest``. ``private``: fetched with credentials, shown only to confirmed callers."""

    registry: str  # a name, host[:port]
    repository: str  # where it came from: where a caller's access is confirmed
    digest: str
    size: int
    media_type: str
    private: bool
    signature: Signature | None = None  # the seed's, over ``signed_bytes`` (none without a cluster identity)

    def to_json(self) -> dict[str, Any]:
        return {"registry": self.registry, "repository": self.repository, "digest": self.digest, "size": self.size,
                "media_type": self.media_type, "private": self.private, **_signature_json(self.signature)}

    def signed_bytes(self) -> bytes:
        return _canonical({key: value for key, value in self.to_json().items() if key != "signature"})

    @classmethod
    def from_json(cls, obj: Any, message: str = "ManifestRecord") -> "ManifestRecord":
        f = _Fields(message, obj)
        registry, repository = _registry_and_repository(f)
        return cls(registry, repository, parse_task_id(f.text("digest")), f.integer("size", low=1,
                   high=MAX_MANIFEST_BYTES), f.text("media_type", limit=MAX_MEDIA_TYPE), f.boolean("private"),
                   _signature_of(f))


@dataclass(frozen=True)
class TagRecord:
    """A tag's resolution by a seed at its registry: the manifest it named then, and when."""

    tag: str
    manifest: ManifestRecord  # its signature, if any, is the tag record's: over ``signed_bytes``
    resolved_at: float  # seconds since the epoch

    def to_json(self) -> dict[str, Any]:
        return {**self.manifest.to_json(), "tag": self.tag, "resolved_at": self.resolved_at}

    def signed_bytes(self) -> bytes:
        return _canonical({key: value for key, value in self.to_json().items() if key != "signature"})

    @classmethod
    def from_json(cls, obj: Any) -> "TagRecord":
        f = _Fields("TagRecord", obj)
        return cls(_tag(f), ManifestRecord.from_json(obj, "TagRecord"), f.number("resolved_at"))


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _signature_json(signature: Signature | None) -> dict[str, Any]:
    if signature is None:
        return {}
    return {"signature": {"kind": signature.kind, "value": signature.value, "certificate": signature.certificate}}


def _signature_of(f: "_Fields") -> Signature | None:
    found = f.obj.get("signature")
    if found is None:
        return None
    inner = _Fields("signature", found)
    certificate = inner.obj.get("certificate", "")
    if not isinstance(certificate, str) or len(certificate) > MAX_CERTIFICATE:
        raise inner.fail("certificate", f"must be a PEM certificate of at most {MAX_CERTIFICATE} characters")
    return Signature(inner.text("kind", limit=16), inner.text("value", limit=1024), certificate)


@dataclass(frozen=True)
class TagPublication:
    """POST {scheduler}/api/v1/tags: a seed publishes a tag it resolved at its registry, with
    the manifests it keeps for it (the tag's, and an index's children). Seeds only."""

    host_id: str
    tag: TagRecord
    manifests: tuple[ManifestRecord, ...]

    def to_json(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "tag": self.tag.to_json(),
                "manifests": [manifest.to_json() for manifest in self.manifests]}

    @classmethod
    def from_json(cls, obj: Any) -> "TagPublication":
        f = _Fields("TagPublication", obj)
        return cls(f.text("host_id"), TagRecord.from_json(f.obj.get("tag")),
                   tuple(ManifestRecord.from_json(m) for m in f.array("manifests", MAX_INDEX_CHILDREN + 1)))


@dataclass(frozen=True)
class TagConfirm:
    """POST {seed upload_url}/api/v1/seed/tags: a node that resolved a tag at the registry
    asks a seed to resolve it too, with the caller's credentials, and to publish what it
    found. The seed trusts nothing of the node's answer: it asks the registry itself."""

    registry: str
    repository: str
    tag: str
    authorization: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"registry": self.registry, "repository": self.repository, "tag": self.tag,
                "authorization": self.authorization}

    @classmethod
    def from_json(cls, obj: Any) -> "TagConfirm":
        f = _Fields("TagConfirm", obj)
        registry, repository = _registry_and_repository(f)
        return cls(registry, repository, _tag(f), f.optional_text("authorization", MAX_AUTHORIZATION))
