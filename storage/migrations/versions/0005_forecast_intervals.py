"""Prediction intervals on forecasts (80 % and 95 % bounds); the gate's p-value on promotions.

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BOUNDS = ("lower_80", "upper_80", "lower_95", "upper_95")


def upgrade() -> None:
    # Nullable: forecasts stored before intervals existed (and naive's) have no band.
    with op.batch_alter_table("forecasts") as batch:
        for column in _BOUNDS:
            batch.add_column(sa.Column(column, sa.Double(), nullable=True))
    with op.batch_alter_table("promotions") as batch:
        batch.add_column(sa.Column("p_value", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.drop_column("p_value")
    with op.batch_alter_table("forecasts") as batch:
        for column in reversed(_BOUNDS):
            batch.drop_column(column)
