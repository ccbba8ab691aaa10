"""acquisitions: the measurement a scan index counts in

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 12:10:00

Harmony, CellVoyager and MetaXpress count a plate's scan indexes from 1 in each acquisition
(measurement), so a plate read daily as one measurement a day gave every day's images the
same time key and each well one readout of all days. Each acquisition of a plate gets an
ordinal in the order first seen; a scan's time key is its index plus 100000 times that
ordinal, so the plate's first acquisition keeps the keys it had. Rows stored before this
revision keep theirs; the writer gives ordinal 0 to the acquisition they came from, when it is
met again, and ordinal 1 on to any other.
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'acquisitions',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('plate_id', sa.Integer(), sa.ForeignKey('plates.id'), nullable=False),
        sa.Column('name', sa.String(500), nullable=False),
        sa.Column('ordinal', sa.Integer(), nullable=False),
        sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('plate_id', 'name'),
        sa.UniqueConstraint('plate_id', 'ordinal'),
    )


def downgrade() -> None:
    op.drop_table('acquisitions')
