"""jobs: a separate dev dataset

`jobs.dev_dataset_id` references the uploaded dataset a job evaluates on (`data.dev_dataset_id` of its spec), so
deleting it is refused while the job is unfinished, exactly like the training dataset.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dev_dataset_id", sa.String(length=32), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_dev_dataset_id"), ["dev_dataset_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_dev_dataset_id_datasets"), "datasets", ["dev_dataset_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_dev_dataset_id_datasets"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_dev_dataset_id"))
        batch_op.drop_column("dev_dataset_id")
