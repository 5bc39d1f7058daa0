"""SIP credentials that authenticate by source address.

- ``sip_credentials.authenticate_by``: ``digest`` (the default, and every credential made
  before) or ``source``: an INVITE without ``Authorization`` from one of the credential's
  ``allowed_networks`` is taken as its API key's, with no challenge (carrier trunks that
  authenticate by IP address and never answer a digest challenge).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sip_credentials") as batch:
        batch.add_column(
            sa.Column("authenticate_by", sa.String(16), nullable=False, server_default="digest")
        )


def downgrade() -> None:
    with op.batch_alter_table("sip_credentials") as batch:
        batch.drop_column("authenticate_by")
