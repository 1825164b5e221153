"""Price tables: daily_prices, price_revisions, rejected_rows.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _price_columns() -> list[sa.Column]:
    return [
        sa.Column("open", sa.Double(), nullable=True),
        sa.Column("high", sa.Double(), nullable=True),
        sa.Column("low", sa.Double(), nullable=True),
        sa.Column("close", sa.Double(), nullable=False),
        sa.Column("volume", sa.Double(), nullable=True),
        sa.Column("market_cap", sa.Double(), nullable=True),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "daily_prices",
        sa.Column("ticker", sa.String(32), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        *_price_columns(),
        sa.PrimaryKeyConstraint("ticker", "date", name="pk_daily_prices"),
        sa.CheckConstraint("close > 0", name="ck_daily_prices_close_positive"),
        sa.CheckConstraint("high IS NULL OR low IS NULL OR high >= low", name="ck_daily_prices_hl"),
    )
    op.create_table(
        "price_revisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticker", sa.String(32), nullable=False),
        sa.Column("date", sa.Date(), nullable=False),
        *_price_columns(),
        sa.Column("revised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revised_by_source", sa.String(500), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_price_revisions"),
    )
    op.create_index("ix_price_revisions_ticker_date", "price_revisions", ["ticker", "date"])
    op.create_table(
        "rejected_rows",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticker", sa.String(32), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("line_number", sa.Integer(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rejected_rows"),
    )
    op.create_index("ix_rejected_rows_ticker", "rejected_rows", ["ticker"])


def downgrade() -> None:
    op.drop_index("ix_rejected_rows_ticker", table_name="rejected_rows")
    op.drop_table("rejected_rows")
    op.drop_index("ix_price_revisions_ticker_date", table_name="price_revisions")
    op.drop_table("price_revisions")
    op.drop_table("daily_prices")
