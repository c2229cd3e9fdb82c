"""The manager's tables, its database URL rule, and its migrations.

SQLAlchemy 2 with a synchronous engine: the handlers run each transaction in a thread
(asyncio.to_thread). An async engine would need aiosqlite for SQLite, which Damselfly
does not depend on, and Alembic runs synchronously anyway; a manager's write rate
(keepalives every few seconds per host) is far below what a thread pool carries.

The schema is created and changed only by the Alembic migrations in ``migrations/``,
applied at start (``migrate``); tests check that the migrations and these tables agree.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, BigInteger, DateTime, Engine, ForeignKey, Integer, String, TypeDecorator,
                        UniqueConstraint, create_engine, event)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger(__name__)
DEFAULT_DATABASE_FILE = "manager.db"
SQLITE_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another's transaction before "database is locked"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the backend keeps (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


class UserRow(Base):
    __tablename__ = "users"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class TokenRow(Base):
    """A sign-in session or a personal access token; only the token's hash is kept."""

    __tablename__ = "tokens"
    __table_args__ = (UniqueConstraint("user_id", "kind", "name", name="uq_tokens_user_kind_name"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]


class ClusterRow(Base):
    __tablename__ = "clusters"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    scopes: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ComponentRow(Base):
    """A scheduler, seed peer or peer as it last registered and kept alive; kept when it stops."""

    __tablename__ = "components"
    __table_args__ = (UniqueConstraint("kind", "host_id", name="uq_components_kind_host"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    host_id: Mapped[str] = mapped_column(String(255))
    cluster_id: Mapped[int | None] = mapped_column(ForeignKey("clusters.id", ondelete="SET NULL"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    idc: Mapped[str | None] = mapped_column(String(255))
    location: Mapped[str | None] = mapped_column(String(255))
    ip: Mapped[str | None] = mapped_column(String(64))
    requested_cluster: Mapped[str | None] = mapped_column(String(64))
    scheduler_url: Mapped[str | None] = mapped_column(String(2048))
    uploaded_bytes: Mapped[int] = mapped_column(BigInteger)
    served_bytes: Mapped[int] = mapped_column(BigInteger)
    registered_at: Mapped[datetime]
    last_keepalive_at: Mapped[datetime]


class JobRow(Base):
    """A preheat job: its arguments without credentials, how it stands, and where each
    part is (as the schedulers last reported)."""

    __tablename__ = "jobs"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    cluster_ids: Mapped[list[int]] = mapped_column(JSON)
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    error: Mapped[str | None] = mapped_column(String(1024))
    blobs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class AuditRow(Base):
    __tablename__ = "audit"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(255))
    credential: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(2048))
    status: Mapped[int] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(String(1024))


def database_url(value: str | None, data_dir: Path) -> str:
    """The SQLAlchemy URL of ``--database``: ``sqlite:///PATH`` (default: manager.db in the
    data dir) or ``postgresql://USER:PASSWORD@HOST:PORT/DB``, which is driven by psycopg 3.
    ValueError, saying what is accepted, for anything else."""
    if not value:
        return f"sqlite:///{(data_dir / DEFAULT_DATABASE_FILE).resolve()}"
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(f"invalid database URL {_redacted(value)!r}: want sqlite:///PATH or "
                         "postgresql://USER:PASSWORD@HOST:PORT/DB") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.drivername != "sqlite":
            raise ValueError(f"{url.drivername}: only the built-in sqlite driver is supported")
        if not url.database or url.database == ":memory:":
            raise ValueError("a SQLite database needs a file: sqlite:///PATH")
        return url.render_as_string(hide_password=False)
    if backend in ("postgresql", "postgres"):
        if url.drivername not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise ValueError(f"{url.drivername}: PostgreSQL is driven by psycopg 3 (postgresql://...)")
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {backend!r}: want sqlite:///PATH or postgresql://...")


def _redacted(value: str) -> str:
    """A URL as it may be logged: without its password."""
    try:
        return make_url(value).render_as_string(hide_password=True)
    except ArgumentError:
        return value.split("@")[-1]


def redacted_url(url: str) -> str:
    return _redacted(url)


def describe_database_error(error: Exception) -> str:
    """A driver's error in one line, without SQLAlchemy's pointer to its web page."""
    original = getattr(error, "orig", None) or error
    return " ".join(str(original).split())


WRITE_LOCK = "damselfly_write_lock"  # execution option of a session that will write (see open_engine)


def open_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite gets foreign keys (off by default there), WAL (readers do
    not wait for the writer) and a busy timeout (writers from several threads queue instead
    of failing)."""
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _: Any) -> None:
            connection.isolation_level = None  # the driver's own BEGIN is deferred: "begin" below says when
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _write_lock_first(connection: Any) -> None:
            # SQLite ignores SELECT ... FOR UPDATE: two transactions could each count the other's
            # root as left and both demote theirs. A writing transaction takes the write lock
            # at BEGIN, which serialises them; readers under WAL still read without waiting.
            writes = connection.get_execution_options().get(WRITE_LOCK, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (alembic upgrade head)."""
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin at every start
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("damselfly.manager") / "migrations"))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
