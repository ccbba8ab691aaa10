"""served_models: the metadata of model files the daemon served without the registry

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 20:50:00

A model served from a file (``nscmonitor run --model``, ``model = ...`` in the config) had its
version on every prediction but its metadata nowhere in the database, so the dashboard and the
report called its wells with the default rule ("not in the registry") instead of the rule the
model carries, and the report's provenance had nothing to show. The daemon now keeps each such
file's metadata here the first time it serves it.
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'served_models',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version', sa.String(length=120), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('meta', sa.JSON(), nullable=False),
        sa.Column('first_served_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('version'),
    )


def downgrade() -> None:
    op.drop_table('served_models')
