"""images: a lease (owner, expiry) on each claimed image, for daemons sharing one database

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:10:00

Several daemons on one PostgreSQL database claim images from the same queue. A claim
records who holds the image and until when; the holder renews it while it lives, and any
daemon puts an image whose lease ran out (its holder was killed or cut off) back in the
queue. Both columns are empty for images no one holds.
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.add_column(sa.Column('lease_owner', sa.String(length=120), nullable=True))
        batch.add_column(sa.Column('lease_expires_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('images') as batch:
        batch.drop_column('lease_expires_at')
        batch.drop_column('lease_owner')
