"""jobs.name, jobs.tags, jobs.notes and the indexes that keep their filters fast

Tags are varchar[] on PostgreSQL with a GIN index, a JSON array on SQLite: `tags @> ARRAY['a','b']`
answers "all of these tags" from one index, with no second table to keep in step on every edit (a
job_tags table would need a join or EXISTS per tag and a write per label change). varchar[] rather
than JSONB because ANALYZE keeps per-element statistics for arrays: with JSONB the planner guessed a
tag's frequency, and for a six-job tag once walked the whole created_at index (166 ms at 100k jobs,
bench/poll.py) where the GIN index answers in a few. Text search uses pg_trgm GIN indexes
on name, notes and kind (ILIKE '%q%' becomes an index scan); on SQLite these indexes are empty
partial indexes (`WHERE 0`) and the filters scan, which is fine at embedded sizes.

Revision ID: 0003_job_labels
Revises: 0002_job_parent
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_job_labels"
down_revision: str | None = "0002_job_parent"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRGM = ("name", "notes", "kind")


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    if pg:
        # pg_trgm is a trusted extension (PostgreSQL 13+): the database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    tags_type = sa.JSON().with_variant(postgresql.ARRAY(sa.String(length=64)), "postgresql")
    empty = sa.text("'{}'") if pg else sa.text("'[]'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("tags", tags_type, server_default=empty, nullable=False))
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))
    never = sa.text("0")
    op.create_index("ix_jobs_owner_name", "jobs", ["owner_id", "name"], postgresql_ops={"name": "varchar_pattern_ops"})
    op.create_index(
        "ix_jobs_tags", "jobs", ["tags"], postgresql_using="gin", sqlite_where=never,
    )  # fmt: skip
    for column in TRGM:
        op.create_index(
            f"ix_jobs_{column}_trgm", "jobs", [column], postgresql_using="gin",
            postgresql_ops={column: "gin_trgm_ops"}, sqlite_where=never,
        )  # fmt: skip


def downgrade() -> None:
    for column in TRGM:
        op.drop_index(f"ix_jobs_{column}_trgm", table_name="jobs")
    op.drop_index("ix_jobs_tags", table_name="jobs")
    op.drop_index("ix_jobs_owner_name", table_name="jobs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("notes")
        batch_op.drop_column("tags")
        batch_op.drop_column("name")
