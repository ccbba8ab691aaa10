"""predictions.ood_score/ood, well_readouts.n_ood: the out-of-distribution flag

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 04:20:00

A model fitted with an out-of-distribution score (its threshold in the model metadata)
gives every scored image a score and a flag; a well's readout counts its flagged images so
the dashboard, the export and the confident calls can set them apart. All three columns are
NULL where the model gives no flag (older models, rows scored before this revision): the
flag is unavailable there, never "in distribution".
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('predictions') as batch:
        batch.add_column(sa.Column('ood_score', sa.Float(), nullable=True))
        batch.add_column(sa.Column('ood', sa.Boolean(), nullable=True))
    with op.batch_alter_table('well_readouts') as batch:
        batch.add_column(sa.Column('n_ood', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('well_readouts') as batch:
        batch.drop_column('n_ood')
    with op.batch_alter_table('predictions') as batch:
        batch.drop_column('ood')
        batch.drop_column('ood_score')
