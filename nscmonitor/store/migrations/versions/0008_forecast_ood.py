"""well_forecasts.ood/n_ood: the well forecast's own out-of-distribution flag

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 15:40:00

A forecast model fitted with its own out-of-distribution score (its threshold in the model
metadata) flags the frames unlike its training images; each forecast records whether it is
flagged and how many of the well's frames up to its time were. Both columns are NULL where
the forecast model has no such score (older models, rows stored before this revision): the
flag is unavailable there, never "in distribution".
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('well_forecasts') as batch:
        batch.add_column(sa.Column('ood', sa.Boolean(), nullable=True))
        batch.add_column(sa.Column('n_ood', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('well_forecasts') as batch:
        batch.drop_column('n_ood')
        batch.drop_column('ood')
