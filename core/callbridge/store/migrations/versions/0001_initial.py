"""Initial schema: api_keys, connectors, calls.

Revision ID: 0001
Revises:
Create Date: 2026-06-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("apikey", sa.String(64), nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("apikey", name="pk_api_keys"),
    )
    op.create_table(
        "connectors",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("apikey", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("default_room_id", sa.String(128), nullable=True),
        sa.Column("default_rule_id", sa.String(128), nullable=True),
        sa.Column("region", sa.String(32), nullable=True),
        sa.Column("webhook_key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_connectors"),
        sa.ForeignKeyConstraint(
            ["apikey"],
            ["api_keys.apikey"],
            name="fk_connectors_apikey_api_keys",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_connectors_apikey", "connectors", ["apikey"])
    op.create_index(
        "ix_connectors_webhook_key_hash", "connectors", ["webhook_key_hash"], unique=True
    )
    op.create_table(
        "calls",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("apikey", sa.String(64), nullable=False),
        sa.Column("connector_id", sa.String(32), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_call_id", sa.String(255), nullable=False),
        sa.Column("from_number", sa.String(255), nullable=True),
        sa.Column("to_number", sa.String(255), nullable=True),
        sa.Column("room_id", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("end_reason", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
        sa.ForeignKeyConstraint(
            ["apikey"], ["api_keys.apikey"], name="fk_calls_apikey_api_keys", ondelete="CASCADE"
        ),
        sa.UniqueConstraint(
            "connector_id", "provider_call_id", name="uq_calls_connector_id_provider_call_id"
        ),
        sa.CheckConstraint(
            "status IN ('started', 'answered', 'ended', 'failed')", name="ck_calls_status"
        ),
    )
    op.create_index("ix_calls_apikey_created_at", "calls", ["apikey", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_calls_apikey_created_at", table_name="calls")
    op.drop_table("calls")
    op.drop_index("ix_connectors_webhook_key_hash", table_name="connectors")
    op.drop_index("ix_connectors_apikey", table_name="connectors")
    op.drop_table("connectors")
    op.drop_table("api_keys")
