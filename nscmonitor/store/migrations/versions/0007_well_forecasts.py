"""frame_features, well_forecasts: the time-aware well model's inputs and forecasts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 04:40:00

The second scoring stage keeps each scored image's well-model features (so a well's
forecast is recomputed from its earlier frames without decoding them again) and one
forecast per well, time and forecast model version, with the model's hash, the
normalisation and what the forecast read. Per-image predictions and well readouts are
untouched.
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'frame_features',
        sa.Column('image_id', sa.Integer(), sa.ForeignKey('images.id', ondelete='CASCADE'), primary_key=True),
        sa.Column('extractor', sa.String(60), nullable=False),
        sa.Column('feature_values', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        'well_forecasts',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('well_id', sa.Integer(), sa.ForeignKey('wells.id'), nullable=False),
        sa.Column('plate_id', sa.Integer(), sa.ForeignKey('plates.id'), nullable=False),
        sa.Column('time_key', sa.Integer(), nullable=False),
        sa.Column('elapsed_h', sa.Float(), nullable=True),
        sa.Column('model_version', sa.String(120), nullable=False),
        sa.Column('model_sha256', sa.String(64), nullable=False),
        sa.Column('normalisation', sa.String(40), nullable=False),
        sa.Column('classes', sa.JSON(), nullable=False),
        sa.Column('probs', sa.JSON(), nullable=False),
        sa.Column('n_timepoints', sa.Integer(), nullable=False),
        sa.Column('n_images', sa.Integer(), nullable=False),
        sa.Column('n_reference_wells', sa.Integer(), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('well_id', 'time_key', 'model_version'),
    )
    op.create_index('ix_forecasts_plate_time', 'well_forecasts', ['plate_id', 'model_version', 'time_key'])


def downgrade() -> None:
    op.drop_index('ix_forecasts_plate_time', table_name='well_forecasts')
    op.drop_table('well_forecasts')
    op.drop_table('frame_features')
