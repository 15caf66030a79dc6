"""search trials: job kind, parent job, trial number and trial record

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=10), server_default='job', nullable=False))
        batch_op.add_column(sa.Column('parent_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('trial_number', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('trial', sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_parent_id'), ['parent_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_jobs_parent_id_jobs'), 'jobs', ['parent_id'], ['id'], ondelete='CASCADE')


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_jobs_parent_id_jobs'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_parent_id'))
        batch_op.drop_column('trial')
        batch_op.drop_column('trial_number')
        batch_op.drop_column('parent_id')
        batch_op.drop_column('kind')
