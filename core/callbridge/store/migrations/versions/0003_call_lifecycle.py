"""Call lifecycle: status ``started`` becomes ``routed``, end reasons become an enum with a free
``end_detail``, calls record their owning process, claim time and ref expiry; ``instances``
holds each server process's heartbeat.

End reasons written before this migration are mapped onto the enum: ``handshake refused: …``
becomes ``signature`` (when the text is about a signature) or ``handshake-refused``; a routing
explanation becomes ``no-route``; ``ended-before-answer`` becomes ``api-hangup``; any other
value outside the enum becomes ``error``. The original text moves to ``end_detail``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_END_REASONS = (
    "caller-hangup",
    "stream-closed",
    "room-hangup",
    "api-hangup",
    "max-duration",
    "room-closed",
    "shutdown",
    "no-route",
    "ref-expired",
    "handshake-refused",
    "signature",
    "no-room",
    "no-start",
    "interrupted",
    "error",
)


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_constraint("ck_calls_status", type_="check")
    op.execute("UPDATE calls SET status = 'routed' WHERE status = 'started'")
    with op.batch_alter_table("calls") as batch:
        batch.create_check_constraint(
            "ck_calls_status", "status IN ('routed', 'answered', 'ended', 'failed')"
        )
        batch.add_column(sa.Column("end_detail", sa.String(500), nullable=True))
        batch.add_column(sa.Column("owner_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("ref_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_calls_status_ref_expires_at", ["status", "ref_expires_at"])
    _map_end_reasons()
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_instances"),
    )


def _map_end_reasons() -> None:
    known = ", ".join(f"'{reason}'" for reason in _END_REASONS)
    op.execute(
        "UPDATE calls SET end_detail = substr(end_reason, 20), end_reason = CASE "
        "WHEN lower(end_reason) LIKE '%signature%' THEN 'signature' ELSE 'handshake-refused' END "
        "WHERE end_reason LIKE 'handshake refused: %'"
    )
    op.execute(
        "UPDATE calls SET end_detail = end_reason, end_reason = 'no-route' "
        "WHERE end_reason LIKE 'no routing strategy%'"
    )
    op.execute(
        "UPDATE calls SET end_reason = 'api-hangup' WHERE end_reason = 'ended-before-answer'"
    )
    op.execute(
        "UPDATE calls SET end_detail = substr(end_reason, 1, 500), end_reason = 'error' "
        f"WHERE end_reason IS NOT NULL AND end_reason NOT IN ({known})"
    )


def downgrade() -> None:
    op.drop_table("instances")
    with op.batch_alter_table("calls") as batch:
        batch.drop_index("ix_calls_status_ref_expires_at")
        batch.drop_column("ref_expires_at")
        batch.drop_column("claimed_at")
        batch.drop_column("owner_id")
        batch.drop_column("end_detail")
        batch.drop_constraint("ck_calls_status", type_="check")
    op.execute("UPDATE calls SET status = 'started' WHERE status = 'routed'")
    with op.batch_alter_table("calls") as batch:
        batch.create_check_constraint(
            "ck_calls_status", "status IN ('started', 'answered', 'ended', 'failed')"
        )
