"""unique API key names; job heartbeats

Key names become unique (a second `dskd keys create laptop` no longer joins the first one's tenant silently):
existing duplicates are renamed `name-2`, `name-3`, ... before the constraint is added. Jobs get `heartbeat_at`,
written by the worker holding the lease, so a dead holder is recognised in seconds instead of at lease expiry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rename_duplicate_key_names() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, name FROM api_keys ORDER BY created_at, id")).all()
    taken = {name for _, name in rows}
    seen: set[str] = set()
    for key_id, name in rows:
        if name not in seen:
            seen.add(name)
            continue
        n = 2
        while f"{name}-{n}"[:200] in taken:
            n += 1
        new = f"{name}-{n}"[:200]
        taken.add(new)
        conn.execute(sa.text("UPDATE api_keys SET name = :new WHERE id = :id"), {"new": new, "id": key_id})


def upgrade() -> None:
    _rename_duplicate_key_names()
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f("uq_api_keys_name"), ["name"])
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_api_keys_name"), type_="unique")
