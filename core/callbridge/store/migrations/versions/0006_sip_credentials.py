"""SIP credentials of API keys.

- ``sip_credentials``: a digest ``username`` (unique on the server), its ``password`` as an
  opaque AES-GCM token bound to the credential id, an optional label (``name``), an optional
  source-address allow-list (``allowed_networks``, a JSON list of CIDR networks; ``NULL``:
  any address), when it was made, last rotated and last used.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sip_credentials",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("apikey", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("password", sa.Text(), nullable=False),
        sa.Column("allowed_networks", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("rotated_at", _TS, nullable=True),
        sa.Column("last_used_at", _TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["apikey"],
            ["api_keys.apikey"],
            name="fk_sip_credentials_apikey_api_keys",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sip_credentials"),
    )
    op.create_index("ix_sip_credentials_apikey", "sip_credentials", ["apikey"])
    op.create_index("ix_sip_credentials_username", "sip_credentials", ["username"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_sip_credentials_username", table_name="sip_credentials")
    op.drop_index("ix_sip_credentials_apikey", table_name="sip_credentials")
    op.drop_table("sip_credentials")
