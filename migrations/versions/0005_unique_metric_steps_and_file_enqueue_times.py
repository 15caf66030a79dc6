"""one metric point per (job, name, step); files.enqueued_at

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 22:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Points a resumed run wrote twice: keep the first of each (job, name, step).
    op.execute(
        sa.text(
            "DELETE FROM metrics WHERE id NOT IN "
            "(SELECT MIN(id) FROM metrics GROUP BY job_id, name, step)"
        )
    )
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_metrics_job_id_name_step")
        batch_op.create_unique_constraint("uq_metrics_job_id_name_step", ["job_id", "name", "step"])
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "enqueued_at",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default=sa.text("CURRENT_TIMESTAMP"),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("enqueued_at")
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_constraint("uq_metrics_job_id_name_step", type_="unique")
        batch_op.create_index("ix_metrics_job_id_name_step", ["job_id", "name", "step"])
