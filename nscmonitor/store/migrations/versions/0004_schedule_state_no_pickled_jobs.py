"""schedule state in plain columns; drop APScheduler's pickled job table

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 00:30:00

APScheduler's SQLAlchemy job store unpickled ``apscheduler_jobs.job_state`` at every
start: anyone able to write the database could run code as the daemon, and one garbage
row stopped the daemon. The schedule now lives in the configuration and its planned run
time in ``schedule_state``; the old table is dropped when present (a database created
before the scheduler first ran never had it).
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('schedule_state',
    sa.Column('job_id', sa.String(length=60), nullable=False),
    sa.Column('schedule', sa.Text(), nullable=False),
    sa.Column('next_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_run_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_status', sa.String(length=20), nullable=True),
    sa.PrimaryKeyConstraint('job_id')
    )
    if 'apscheduler_jobs' in sa.inspect(op.get_bind()).get_table_names():
        op.drop_table('apscheduler_jobs')


def downgrade() -> None:
    # The pickled job table is not recreated: APScheduler builds it itself when needed.
    op.drop_table('schedule_state')
