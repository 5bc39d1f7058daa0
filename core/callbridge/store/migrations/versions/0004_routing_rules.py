"""Routing rules: ``routing_rules`` per API key; connectors record whether they come from the
API or the YAML configuration; calls record their region, the strategy and rule that routed
them and the route's metadata (JSON); ``end_detail`` grows to hold a routing explanation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routing_rules",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("apikey", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("match_key", sa.String(64), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["apikey"],
            ["api_keys.apikey"],
            name="fk_routing_rules_apikey_api_keys",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_routing_rules"),
    )
    op.create_index("ix_routing_rules_apikey_match", "routing_rules", ["apikey", "match_key"])
    with op.batch_alter_table("connectors") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="api"))
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("region", sa.String(32), nullable=True))
        batch.add_column(sa.Column("route_strategy", sa.String(64), nullable=True))
        batch.add_column(sa.Column("route_rule_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("route_metadata", sa.Text(), nullable=True))
        batch.alter_column(
            "end_detail", type_=sa.String(2000), existing_type=sa.String(500), nullable=True
        )


def downgrade() -> None:
    op.execute("UPDATE calls SET end_detail = substr(end_detail, 1, 500)")
    with op.batch_alter_table("calls") as batch:
        batch.alter_column(
            "end_detail", type_=sa.String(500), existing_type=sa.String(2000), nullable=True
        )
        batch.drop_column("route_metadata")
        batch.drop_column("route_rule_id")
        batch.drop_column("route_strategy")
        batch.drop_column("region")
    with op.batch_alter_table("connectors") as batch:
        batch.drop_column("source")
    op.drop_index("ix_routing_rules_apikey_match", table_name="routing_rules")
    op.drop_table("routing_rules")
