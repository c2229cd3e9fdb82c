"""The manager's reads and writes, each one database transaction (blocking: the API calls
them through asyncio.to_thread).

A write and its audit entry commit together or not at all, so a refused or failed request
leaves nothing half written. Rows become API models before the session closes; nothing
outside this module sees a row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from damselfly.manager.access import PERSONAL, SESSION, Principal
from damselfly.manager.database import AuditRow, ClusterRow, ComponentRow, JobRow, TokenRow, UserRow, WRITE_LOCK
from damselfly.manager.errors import ApiError, not_found
from damselfly.manager.matching import (DEFAULT_CLUSTER, Candidate, HostFacts, Scopes, active_since, choose_cluster,
                                        component_state)
from damselfly.manager.models import (AuditEntry, AuditQuery, Cluster, ClusterConfig, ClusterConfigView, ClusterCreate,
                                      ClusterScopes, ClusterScopesView, ClusterUpdate, Component, ComponentQuery,
                                      ComponentRegistration, CreatedToken, Job, JobArgsView, JobBlob, JobCreate,
                                      JobQuery, Keepalive, KeepaliveAnswer, PersonalAccessToken, Registration,
                                      TokenCreate, User, UserCreate)

log = logging.getLogger(__name__)
T = TypeVar("T")
LAST_USED_PRECISION = timedelta(minutes=1)  # a token's last use is written at most this often
ROOT = "root"


@dataclass(frozen=True)
class Audit:
    """Who writes, how they proved it, and the request: what the audit entry records."""

    actor: str
    credential: str
    address: str
    method: str
    path: str


def _normalize_url(url: str) -> str:
    return url.rstrip("/")


def config_view(stored: dict[str, Any]) -> ClusterConfigView:
    return ClusterConfigView(**ClusterConfig.model_validate(stored).model_dump())


def _cluster(row: ClusterRow) -> Cluster:
    return Cluster(id=row.id, name=row.name, config=config_view(row.config),
                   scopes=ClusterScopesView(**ClusterScopes.model_validate(row.scopes).model_dump()),
                   created_at=row.created_at, updated_at=row.updated_at)


def _user(row: UserRow) -> User:
    return User(id=row.id, name=row.name, role=row.role, created_at=row.created_at,  # type: ignore[arg-type]
                updated_at=row.updated_at)


def _token(row: TokenRow, user_name: str) -> PersonalAccessToken:
    return PersonalAccessToken(id=row.id, name=row.name or "", scopes=row.scopes,  # type: ignore[arg-type]
                               user_id=row.user_id, user_name=user_name, created_at=row.created_at,
                               expires_at=row.expires_at, last_used_at=row.last_used_at)


def _scopes(stored: dict[str, Any]) -> Scopes:
    return Scopes(stored.get("idc"), stored.get("location"), tuple(stored.get("cidrs") or ()))


class Store:
    def __init__(self, engine: Engine, inactive_after: float) -> None:
        self.engine = engine
        self.inactive_after = inactive_after
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One transaction; a unique constraint it breaks is the caller's conflict (409)."""
        with self._sessions() as session:
            with session.begin():
                session.connection(execution_options={WRITE_LOCK: True})  # SQLite: the write lock at BEGIN
                yield session

    def _read(self, work: Callable[[Session], T]) -> T:
        with self._sessions() as session:
            return work(session)

    @staticmethod
    def _audit(session: Session, audit: Audit, status: int, summary: str, now: datetime) -> None:
        session.add(AuditRow(at=now, actor=audit.actor[:255], credential=audit.credential[:128],
                             method=audit.method[:8], path=audit.path[:2048], status=status,
                             address=audit.address[:64], summary=summary[:1024]))

    # --- users and sessions -----------------------------------------------------------------------------------

    def ensure_root(self, password_hash: Callable[[], str], now: datetime) -> bool:
        """Create the user ``root`` if there are no users at all; True if it was created."""
        try:
            with self._write() as session:
                if session.scalar(select(func.count()).select_from(UserRow)):
                    return False
                session.add(UserRow(name=ROOT, role=ROOT, password_hash=password_hash(), created_at=now,
                                    updated_at=now))
                self._audit(session, Audit("damselfly", "first start", "", "", ""), 201, "created user root", now)
                return True
        except IntegrityError:  # another manager on the same database made it first
            return False

    def password_of(self, name: str) -> tuple[int, str, str] | None:
        """(id, password hash, role) of the user ``name``, for sign-in."""
        def work(session: Session) -> tuple[int, str, str] | None:
            row = session.scalar(select(UserRow).where(UserRow.name == name))
            return None if row is None else (row.id, row.password_hash, row.role)
        return self._read(work)

    def create_session(self, user_id: int, token_hash: str, expires_at: datetime, audit: Audit,
                       now: datetime) -> None:
        with self._write() as session:
            session.add(TokenRow(user_id=user_id, kind=SESSION, name=None, token_hash=token_hash, scopes=[],
                                 created_at=now, expires_at=expires_at))
            self._audit(session, audit, 200, "signed in", now)

    def principal(self, token_hash: str, now: datetime) -> Principal | str:
        """The caller a token stands for, or why it stands for no one (a 401's message)."""
        with self._sessions() as session:
            found = session.execute(select(TokenRow, UserRow).join(UserRow, TokenRow.user_id == UserRow.id)
                                    .where(TokenRow.token_hash == token_hash)).first()
            if found is None:
                return "unknown or revoked token: sign in again"
            token, user = found
            if now >= token.expires_at:
                return "the token has expired: sign in again" if token.kind == SESSION else \
                    f"token {token.name} expired at {token.expires_at.isoformat()}"
            principal = Principal(user_id=user.id, user_name=user.name, role=user.role, token_kind=token.kind,
                                  token_id=token.id, token_name=token.name, scopes=frozenset(token.scopes))
            stale = token.kind == PERSONAL and (token.last_used_at is None
                                                or now - token.last_used_at >= LAST_USED_PRECISION)
        if stale:  # a writing transaction of its own: upgrading this read one could meet another writer (SQLite)
            with self._write() as session:
                session.execute(update(TokenRow).where(TokenRow.id == principal.token_id).values(last_used_at=now))
        return principal

    def delete_expired_tokens(self, now: datetime) -> int:
        """Forget sessions and tokens past their expiry (they are refused anyway)."""
        with self._write() as session:
            result = session.execute(delete(TokenRow).where(TokenRow.expires_at <= now))
            return int(result.rowcount)  # type: ignore[attr-defined]

    def list_users(self) -> list[User]:
        return self._read(lambda s: [_user(row) for row in s.scalars(select(UserRow).order_by(UserRow.id))])

    def get_user(self, user_id: int) -> User:
        def work(session: Session) -> User:
            row = session.get(UserRow, user_id)
            if row is None:
                raise not_found("user", user_id)
            return _user(row)
        return self._read(work)

    def create_user(self, body: UserCreate, password_hash: str, audit: Audit, now: datetime) -> User:
        try:
            with self._write() as session:
                row = UserRow(name=body.name, role=body.role, password_hash=password_hash, created_at=now,
                              updated_at=now)
                session.add(row)
                session.flush()
                self._audit(session, audit, 201, f"created user {row.name} (id {row.id}, {row.role})", now)
                return _user(row)
        except IntegrityError:
            raise ApiError(409, f"a user named {body.name} exists") from None

    def _roots_left_without(self, session: Session, user_id: int) -> int:
        roots = session.scalars(select(UserRow.id).where(UserRow.role == ROOT).with_for_update()).all()
        return len([id_ for id_ in roots if id_ != user_id])

    def update_user(self, user_id: int, role: str | None, password_hash: str | None, audit: Audit,
                    now: datetime) -> User:
        with self._write() as session:
            row = session.get(UserRow, user_id)
            if row is None:
                raise not_found("user", user_id)
            changes = []
            if role is not None and role != row.role:
                if row.role == ROOT and not self._roots_left_without(session, user_id):
                    raise ApiError(409, f"{row.name} is the last root user: make another root first")
                changes.append(f"role {row.role} -> {role}")
                row.role = role
            if password_hash is not None:
                row.password_hash = password_hash
                # A new password ends the user's sign-ins (whoever knew the old one is out).
                session.execute(delete(TokenRow).where(TokenRow.user_id == user_id, TokenRow.kind == SESSION))
                changes.append("password changed, sessions ended")
            row.updated_at = now
            self._audit(session, audit, 200, f"updated user {row.name} (id {row.id}): "
                                             f"{', '.join(changes) or 'no change'}", now)
            return _user(row)

    def delete_user(self, user_id: int, audit: Audit, now: datetime) -> None:
        with self._write() as session:
            row = session.get(UserRow, user_id)
            if row is None:
                raise not_found("user", user_id)
            if row.role == ROOT and not self._roots_left_without(session, user_id):
                raise ApiError(409, f"{row.name} is the last root user: make another root first")
            session.execute(delete(TokenRow).where(TokenRow.user_id == user_id))
            session.delete(row)
            self._audit(session, audit, 204, f"deleted user {row.name} (id {user_id}) and its tokens", now)

    # --- personal access tokens --------------------------------------------------------------------------------

    def list_tokens(self) -> list[PersonalAccessToken]:
        def work(session: Session) -> list[PersonalAccessToken]:
            rows = session.execute(select(TokenRow, UserRow.name).join(UserRow, TokenRow.user_id == UserRow.id)
                                   .where(TokenRow.kind == PERSONAL).order_by(TokenRow.id))
            return [_token(token, name) for token, name in rows]
        return self._read(work)

    def create_token(self, owner: Principal, body: TokenCreate, token: str, token_hash: str, audit: Audit,
                     now: datetime) -> CreatedToken:
        if body.expires_at <= now:
            raise ApiError(400, "expires_at: must be in the future")
        try:
            with self._write() as session:
                row = TokenRow(user_id=owner.user_id, kind=PERSONAL, name=body.name, token_hash=token_hash,
                               scopes=sorted(set(body.scopes)), created_at=now, expires_at=body.expires_at)
                session.add(row)
                session.flush()
                self._audit(session, audit, 201, f"created token {body.name} (id {row.id}, scopes "
                                                 f"{', '.join(row.scopes)}, expires {body.expires_at.isoformat()})",
                            now)
                return CreatedToken(**_token(row, owner.user_name).model_dump(), token=token)
        except IntegrityError:
            raise ApiError(409, f"{owner.user_name} has a token named {body.name} already") from None

    def delete_token(self, token_id: int, audit: Audit, now: datetime) -> None:
        with self._write() as session:
            row = session.get(TokenRow, token_id)
            if row is None or row.kind != PERSONAL:
                raise not_found("personal access token", token_id)
            session.delete(row)
            self._audit(session, audit, 204, f"revoked token {row.name} (id {token_id})", now)

    # --- clusters --------------------------------------------------------------------------------------------

    def list_clusters(self) -> list[Cluster]:
        return self._read(lambda s: [_cluster(row) for row in s.scalars(select(ClusterRow).order_by(ClusterRow.id))])

    def get_cluster(self, cluster_id: int) -> Cluster:
        def work(session: Session) -> Cluster:
            row = session.get(ClusterRow, cluster_id)
            if row is None:
                raise not_found("cluster", cluster_id)
            return _cluster(row)
        return self._read(work)

    def create_cluster(self, body: ClusterCreate, audit: Audit, now: datetime) -> Cluster:
        try:
            with self._write() as session:
                row = ClusterRow(name=body.name, config=body.config.model_dump(), scopes=body.scopes.model_dump(),
                                 created_at=now, updated_at=now)
                session.add(row)
                session.flush()
                self._audit(session, audit, 201, f"created cluster {row.name} (id {row.id})", now)
                return _cluster(row)
        except IntegrityError:
            raise ApiError(409, f"a cluster named {body.name} exists") from None

    def update_cluster(self, cluster_id: int, patch: ClusterUpdate, audit: Audit, now: datetime) -> Cluster:
        try:
            with self._write() as session:
                row = session.get(ClusterRow, cluster_id)
                if row is None:
                    raise not_found("cluster", cluster_id)
                changed = sorted(patch.model_fields_set)
                if "name" in patch.model_fields_set:
                    if patch.name is None:
                        raise ApiError(400, "name: a cluster keeps a name")
                    row.name = patch.name
                for field in ("config", "scopes"):
                    if field in patch.model_fields_set and getattr(patch, field) is None:
                        raise ApiError(400, f"{field}: give the keys to change, not null")
                if patch.config is not None:
                    row.config = _merged(ClusterConfig, row.config, patch.config.model_dump(
                        include=patch.config.model_fields_set), "config")
                if patch.scopes is not None:
                    row.scopes = _merged(ClusterScopes, row.scopes, patch.scopes.model_dump(
                        include=patch.scopes.model_fields_set), "scopes")
                row.updated_at = now
                session.flush()
                self._audit(session, audit, 200, f"updated cluster {row.name} (id {row.id}): "
                                                 f"{', '.join(changed) or 'no change'}", now)
                return _cluster(row)
        except IntegrityError:
            raise ApiError(409, f"a cluster named {patch.name} exists") from None

    def delete_cluster(self, cluster_id: int, audit: Audit, now: datetime) -> None:
        with self._write() as session:
            row = session.get(ClusterRow, cluster_id)
            if row is None:
                raise not_found("cluster", cluster_id)
            session.delete(row)
            # Its members stay listed, without a cluster, until they keep alive and are placed again.
            self._audit(session, audit, 204, f"deleted cluster {row.name} (id {cluster_id})", now)

    # --- components ------------------------------------------------------------------------------------------

    def _component(self, row: ComponentRow, now: datetime) -> Component:
        return Component(id=row.id, kind=row.kind, cluster_id=row.cluster_id,  # type: ignore[arg-type]
                         host_id=row.host_id, url=row.url, idc=row.idc, location=row.location, ip=row.ip,
                         state=component_state(row.last_keepalive_at, now, self.inactive_after),  # type: ignore[arg-type]
                         registered_at=row.registered_at, last_keepalive_at=row.last_keepalive_at,
                         uploaded_bytes=row.uploaded_bytes, served_bytes=row.served_bytes)

    def list_components(self, kind: str, query: ComponentQuery, now: datetime) -> list[Component]:
        def work(session: Session) -> list[Component]:
            statement = select(ComponentRow).where(ComponentRow.kind == kind)
            if query.cluster_id is not None:
                statement = statement.where(ComponentRow.cluster_id == query.cluster_id)
            since = active_since(now, self.inactive_after)
            if query.state == "active":
                statement = statement.where(ComponentRow.last_keepalive_at >= since)
            elif query.state == "inactive":
                statement = statement.where(ComponentRow.last_keepalive_at < since)
            return [self._component(row, now) for row in session.scalars(statement.order_by(ComponentRow.id))]
        return self._read(work)

    def _cluster_named(self, session: Session, name: str, now: datetime, create: bool = True) -> ClusterRow:
        row = session.scalar(select(ClusterRow).where(ClusterRow.name == name))
        if row is None and not create:
            raise ApiError(404, f"no cluster named {name}: a scheduler's registration or root creates it")
        if row is None:
            row = ClusterRow(name=name, config=ClusterConfig.model_validate({}).model_dump(),
                             scopes=ClusterScopes.model_validate({}).model_dump(),
                             created_at=now, updated_at=now)
            session.add(row)
            session.flush()
            log.info("created cluster %s (id %d) for a component that asked for it", name, row.id)
        return row

    def _place(self, session: Session, kind: str, requested: str | None, scheduler_url: str | None,
               host: HostFacts, now: datetime) -> ClusterRow:
        """The cluster a component joins: the one it names (a scheduler's creates it: a peer's
        certificate is no licence to make clusters); else its scheduler's; else the best
        match of its scopes; else ``default``."""
        if requested:
            return self._cluster_named(session, requested, now, create=kind == "scheduler")
        if scheduler_url:
            cluster_id = session.scalar(select(ComponentRow.cluster_id).where(
                ComponentRow.kind == "scheduler", ComponentRow.url == _normalize_url(scheduler_url),
                ComponentRow.cluster_id.is_not(None)).order_by(ComponentRow.last_keepalive_at.desc()).limit(1))
            if cluster_id is not None:
                return session.get_one(ClusterRow, cluster_id)
        clusters = session.scalars(select(ClusterRow).order_by(ClusterRow.id)).all()
        chosen = choose_cluster([Candidate(row.id, _scopes(row.scopes)) for row in clusters], host)
        if chosen is not None:
            return next(row for row in clusters if row.id == chosen)
        return self._cluster_named(session, DEFAULT_CLUSTER, now)

    def _active_schedulers(self, session: Session, cluster_id: int, now: datetime) -> list[str]:
        return list(session.scalars(select(ComponentRow.url).where(
            ComponentRow.kind == "scheduler", ComponentRow.cluster_id == cluster_id,
            ComponentRow.last_keepalive_at >= active_since(now, self.inactive_after)).order_by(ComponentRow.id)))

    def register(self, body: ComponentRegistration, address: str, audit: Audit, now: datetime,
                 keepalive_interval: float) -> Registration:
        """Create or update the record of (kind, host_id); a second try after a conflict
        covers two registrations (or cluster creations) racing."""
        for attempt in (1, 2):
            try:
                return self._register(body, address, audit, now, keepalive_interval)
            except IntegrityError:
                if attempt == 2:
                    raise ApiError(409, f"{body.kind} {body.host_id}: registration raced another; retry") from None
        raise AssertionError("unreachable")

    def _register(self, body: ComponentRegistration, address: str, audit: Audit, now: datetime,
                  keepalive_interval: float) -> Registration:
        with self._write() as session:
            ip = body.ip or address or None
            cluster = self._place(session, body.kind, body.cluster, body.scheduler_url,
                                  HostFacts(body.idc, body.location, ip), now)
            row = session.scalar(select(ComponentRow).where(ComponentRow.kind == body.kind,
                                                            ComponentRow.host_id == body.host_id))
            again = row is not None
            if row is None:
                row = ComponentRow(kind=body.kind, host_id=body.host_id, uploaded_bytes=0, served_bytes=0)
                session.add(row)
            row.cluster_id = cluster.id
            row.url = _normalize_url(body.url)
            row.idc, row.location, row.ip = body.idc, body.location, ip
            row.requested_cluster, row.scheduler_url = body.cluster, body.scheduler_url
            row.registered_at = row.last_keepalive_at = now
            session.flush()
            self._audit(session, audit, 200, f"{body.kind} {body.host_id} {'registered again' if again else 'registered'}"
                                             f" (id {row.id}) in cluster {cluster.name} (id {cluster.id})", now)
            return Registration(id=row.id, cluster_id=cluster.id, config=config_view(cluster.config),
                                schedulers=self._active_schedulers(session, cluster.id, now),
                                keepalive_interval=keepalive_interval)

    def keepalive(self, component_id: int, body: Keepalive, now: datetime) -> KeepaliveAnswer:
        with self._write() as session:
            row = session.get(ComponentRow, component_id)
            if row is None:
                raise ApiError(404, f"no component with id {component_id}: register again")
            row.last_keepalive_at = now
            row.uploaded_bytes, row.served_bytes = body.uploaded_bytes, body.served_bytes
            cluster = session.get(ClusterRow, row.cluster_id) if row.cluster_id is not None else None
            if cluster is None:  # its cluster was deleted: place it again, as at registration
                cluster = self._place(session, row.kind, row.requested_cluster, row.scheduler_url,
                                      HostFacts(row.idc, row.location, row.ip), now)
                row.cluster_id = cluster.id
                log.info("%s %s placed in cluster %s (id %d): its cluster was deleted", row.kind, row.host_id,
                         cluster.name, cluster.id)
            return KeepaliveAnswer(config=config_view(cluster.config),
                                   schedulers=self._active_schedulers(session, cluster.id, now))

    def component_host(self, component_id: int) -> tuple[str, str] | None:
        """(host id, kind) of a component: who may keep it alive."""
        row = self._read(lambda s: s.execute(select(ComponentRow.host_id, ComponentRow.kind).where(
            ComponentRow.id == component_id)).first())
        return (row[0], row[1]) if row is not None else None

    def schedulers_to_ask(self, cluster_id: int | None, now: datetime) -> list[tuple[str, int | None]]:
        """(url, cluster id) of every active scheduler, or of one cluster's."""
        def work(session: Session) -> list[tuple[str, int | None]]:
            statement = select(ComponentRow.url, ComponentRow.cluster_id).where(
                ComponentRow.kind == "scheduler",
                ComponentRow.last_keepalive_at >= active_since(now, self.inactive_after))
            if cluster_id is not None:
                statement = statement.where(ComponentRow.cluster_id == cluster_id)
            return [(url, cid) for url, cid in session.execute(statement.order_by(ComponentRow.id))]
        return self._read(work)

    # --- jobs ------------------------------------------------------------------------------------------------

    def create_job(self, body: JobCreate, creator: str, audit: Audit, now: datetime) -> Job:
        """A PENDING job in the clusters it names, or else in every cluster with an active
        scheduler (one without would keep the job waiting to its timeout): 404 for a cluster
        that does not exist, 409 when none has an active scheduler."""
        with self._write() as session:
            known = set(session.scalars(select(ClusterRow.id)))
            served = {cluster_id for cluster_id in session.scalars(select(ComponentRow.cluster_id).where(
                ComponentRow.kind == "scheduler", ComponentRow.last_keepalive_at >= active_since(
                    now, self.inactive_after))) if cluster_id is not None}
            wanted = list(dict.fromkeys(body.cluster_ids)) or sorted(served & known)
            missing = [cid for cid in wanted if cid not in known]
            if missing:
                raise not_found("cluster", missing[0])
            if not wanted:
                raise ApiError(409, "no cluster has an active scheduler to preheat in: start one with --manager")
            args = JobArgsView(private=body.args.private, **body.args.model_dump(
                include={"type", "url", "platform", "scope", "count", "percentage", "ips", "timeout", "digest"}))
            row = JobRow(type=body.type, state="PENDING", cluster_ids=wanted, args=args.model_dump(),
                         created_by=creator[:255], created_at=now, updated_at=now, error=None, blobs=[])
            session.add(row)
            session.flush()
            self._audit(session, audit, 201, f"created {body.type} job {row.id} of {body.args.url[:200]}", now)
            return _job(row)

    def list_jobs(self, query: JobQuery) -> list[Job]:
        def work(session: Session) -> list[Job]:
            statement = select(JobRow)
            if query.state is not None:
                statement = statement.where(JobRow.state == query.state)
            return [_job(row) for row in session.scalars(statement.order_by(JobRow.id.desc()).limit(query.limit))]
        return self._read(work)

    def get_job(self, job_id: int) -> Job:
        def work(session: Session) -> Job:
            row = session.get(JobRow, job_id)
            if row is None:
                raise not_found("job", job_id)
            return _job(row)
        return self._read(work)

    def active_jobs(self) -> list[Job]:
        return self._read(lambda s: [_job(row) for row in s.scalars(
            select(JobRow).where(JobRow.state.in_(("PENDING", "RUNNING"))).order_by(JobRow.id))])

    def update_job(self, job_id: int, state: str, error: str | None, blobs: list[JobBlob], now: datetime) -> bool:
        """Record a job's progress, unless it ended meanwhile (a cancel wins over a late report)."""
        with self._write() as session:
            row = session.get(JobRow, job_id)
            if row is None or row.state not in ("PENDING", "RUNNING"):
                return False
            row.state, row.error, row.updated_at = state, error[:1024] if error else None, now
            row.blobs = [blob.model_dump() for blob in blobs]
            return True

    def cancel_job(self, job_id: int, audit: Audit, now: datetime) -> Job:
        with self._write() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise not_found("job", job_id)
            if row.state not in ("PENDING", "RUNNING"):
                raise ApiError(409, f"job {job_id} already ended: {row.state}")
            row.state, row.error, row.updated_at = "CANCELLED", "cancelled", now
            self._audit(session, audit, 200, f"cancelled job {job_id}", now)
            return _job(row)

    def active_seed_peers(self, cluster_id: int, now: datetime) -> list[str]:
        """Host ids of a cluster's active seed peers: whom a job's credentials are sealed for."""
        return self._read(lambda s: list(s.scalars(select(ComponentRow.host_id).where(
            ComponentRow.kind == "seed-peer", ComponentRow.cluster_id == cluster_id,
            ComponentRow.last_keepalive_at >= active_since(now, self.inactive_after)))))

    # --- audit -----------------------------------------------------------------------------------------------

    def list_audit(self, query: AuditQuery) -> list[AuditEntry]:
        def work(session: Session) -> list[AuditEntry]:
            statement = select(AuditRow)
            if query.before_id is not None:
                statement = statement.where(AuditRow.id < query.before_id)
            rows = session.scalars(statement.order_by(AuditRow.id.desc()).limit(query.limit))
            return [AuditEntry(id=r.id, at=r.at, actor=r.actor, credential=r.credential, method=r.method,
                               path=r.path, status=r.status, address=r.address, summary=r.summary) for r in rows]
        return self._read(work)


def _job(row: JobRow) -> Job:
    return Job(id=row.id, type=row.type, state=row.state, cluster_ids=row.cluster_ids,  # type: ignore[arg-type]
               args=JobArgsView.model_validate(row.args), created_by=row.created_by, created_at=row.created_at,
               updated_at=row.updated_at, error=row.error, blobs=[JobBlob.model_validate(b) for b in row.blobs])


def _merged(model: type[ClusterConfig] | type[ClusterScopes], stored: dict[str, Any], changes: dict[str, Any],
            what: str) -> dict[str, Any]:
    """``stored`` with ``changes`` applied, validated whole (a null where none may be is a 400)."""
    from pydantic import ValidationError

    try:
        return model.model_validate({**stored, **changes}).model_dump()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ApiError(400, f"{what}.{where}: {first['msg']}") from None
