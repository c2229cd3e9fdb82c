"""The first schema.

Users, tokens (sessions and personal access tokens), clusters, components (schedulers,
seed peers, peers) and the audit log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(100), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        _time("created_at"),
        _time("expires_at"),
        _time("last_used_at", nullable=True),
        sa.UniqueConstraint("user_id", "kind", "name", name="uq_tokens_user_kind_name"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tokens_user_id", "tokens", ["user_id"])
    op.create_table(
        "clusters",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        _time("created_at"),
        _time("updated_at"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "components",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("host_id", sa.String(255), nullable=False),
        sa.Column("cluster_id", sa.Integer(), sa.ForeignKey("clusters.id", ondelete="SET NULL"), nullable=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("idc", sa.String(255), nullable=True),
        sa.Column("location", sa.String(255), nullable=True),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("requested_cluster", sa.String(64), nullable=True),
        sa.Column("scheduler_url", sa.String(2048), nullable=True),
        sa.Column("uploaded_bytes", sa.BigInteger(), nullable=False),
        sa.Column("served_bytes", sa.BigInteger(), nullable=False),
        _time("registered_at"),
        _time("last_keepalive_at"),
        sa.UniqueConstraint("kind", "host_id", name="uq_components_kind_host"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_components_cluster_id", "components", ["cluster_id"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        _time("at"),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("credential", sa.String(128), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("summary", sa.String(1024), nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    for table in ("audit", "components", "clusters", "tokens", "users"):
        op.drop_table(table)
