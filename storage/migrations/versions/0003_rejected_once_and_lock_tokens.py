"""Rejected rows stored once per (ticker, source, line and content); fencing tokens for locks.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNIQUE = "uq_rejected_rows_ticker_source_content_key"
_BATCH = 5_000


def _content_key(line_number: int | None, raw: str) -> str:
    # Frozen copy of storage.prices.rejection_key as of this revision: migrations never change.
    text = f"{'' if line_number is None else line_number}\n{raw}"
    return hashlib.sha256(text.encode()).hexdigest()


def _fill_content_keys() -> None:
    """Give existing rows their key (page by page), then keep only the first of rows already
    stored twice."""
    connection = op.get_bind()
    rejected = sa.table(
        "rejected_rows",
        sa.column("id", sa.Integer()),
        sa.column("ticker", sa.String()),
        sa.column("source", sa.String()),
        sa.column("line_number", sa.Integer()),
        sa.column("raw", sa.Text()),
        sa.column("content_key", sa.String()),
    )
    update = (
        sa.update(rejected)
        .where(rejected.c.id == sa.bindparam("row_id"))
        .values(content_key=sa.bindparam("key"))
    )
    last_id = -1
    while True:
        page = connection.execute(
            sa.select(rejected.c.id, rejected.c.line_number, rejected.c.raw)
            .where(rejected.c.id > last_id)
            .order_by(rejected.c.id)
            .limit(_BATCH)
        ).all()
        if not page:
            break
        connection.execute(
            update,
            [{"row_id": row_id, "key": _content_key(line, raw)} for row_id, line, raw in page],
        )
        last_id = page[-1][0]
    first = sa.select(sa.func.min(rejected.c.id)).group_by(
        rejected.c.ticker, rejected.c.source, rejected.c.content_key
    )
    connection.execute(sa.delete(rejected).where(rejected.c.id.not_in(first)))


def upgrade() -> None:
    with op.batch_alter_table("rejected_rows") as batch:
        batch.add_column(sa.Column("content_key", sa.String(64), nullable=True))
    _fill_content_keys()
    with op.batch_alter_table("rejected_rows") as batch:
        batch.alter_column("content_key", existing_type=sa.String(64), nullable=False)
        batch.create_index(_UNIQUE, ["ticker", "source", "content_key"], unique=True)
    op.create_table(
        "ticker_locks",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_ticker_locks"),
    )


def downgrade() -> None:
    op.drop_table("ticker_locks")
    with op.batch_alter_table("rejected_rows") as batch:
        batch.drop_index(_UNIQUE)
        batch.drop_column("content_key")
