"""Connector media options and provider credentials; provider account id on calls.

Adds to ``connectors``: ``codec``, ``sample_rate``, ``markup_style`` (null = the provider's
default), ``verify_signatures`` (default false, so existing rows keep working as before) and
``credentials`` (an opaque AES-GCM token). Adds ``account_id`` to ``calls`` (the provider
account, for REST hang-up).

Revision ID: 0002
Revises: 0001
Create Date: 2026-06-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: plain ALTER on PostgreSQL; on SQLite, ADD COLUMN in place (a copy of
    # the table only where SQLite needs one).
    with op.batch_alter_table("connectors") as batch:
        batch.add_column(sa.Column("codec", sa.String(8), nullable=True))
        batch.add_column(sa.Column("sample_rate", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("markup_style", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("verify_signatures", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("credentials", sa.Text(), nullable=True))
    with op.batch_alter_table("calls") as batch:
        batch.add_column(sa.Column("account_id", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("account_id")
    with op.batch_alter_table("connectors") as batch:
        batch.drop_column("credentials")
        batch.drop_column("verify_signatures")
        batch.drop_column("markup_style")
        batch.drop_column("sample_rate")
        batch.drop_column("codec")
