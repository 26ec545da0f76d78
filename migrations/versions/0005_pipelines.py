"""job_deps (pipelines) and jobs.stop_reason (sweeps' budget and early stopping)

Revision ID: 0005_pipelines
Revises: 0003_job_labels
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_pipelines"
down_revision: str | None = "0003_job_labels"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_deps",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("upstream_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_deps_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["upstream_id"], ["jobs.id"], name=op.f("fk_job_deps_upstream_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "upstream_id", name=op.f("pk_job_deps")),
    )
    op.create_index("ix_job_deps_upstream_id", "job_deps", ["upstream_id"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stop_reason", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("stop_reason")
    op.drop_index("ix_job_deps_upstream_id", table_name="job_deps")
    op.drop_table("job_deps")
