"""Promotions may record an 'external-move': the champion alias moved outside pricecast (in the
MLflow UI, say), noticed by the next night.

Revision ID: 0006
Revises: 0005
Create Date: 2025-01-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ck_promotions_action"
_BEFORE = ("promote", "keep", "manual-promote", "rollback")
_AFTER = (*_BEFORE, "external-move")


def _check(actions: tuple[str, ...]) -> str:
    return f"action IN ({', '.join(repr(a) for a in actions)})"


def upgrade() -> None:
    # Batch mode: SQLite cannot alter a CHECK constraint, the table is copied with the new one.
    with op.batch_alter_table("promotions") as batch:
        batch.drop_constraint(_NAME, type_="check")
        batch.create_check_constraint(_NAME, _check(_AFTER))


def downgrade() -> None:
    op.execute("DELETE FROM promotions WHERE action = 'external-move'")
    with op.batch_alter_table("promotions") as batch:
        batch.drop_constraint(_NAME, type_="check")
        batch.create_check_constraint(_NAME, _check(_BEFORE))
