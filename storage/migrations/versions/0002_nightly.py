"""Nightly tables: nightly_runs, promotions (audit), forecasts, forecast_scores.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "nightly_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticker", sa.String(32), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trained", sa.Boolean(), nullable=False),
        sa.Column("last_complete_week", sa.Date(), nullable=True),
        sa.Column("training_cutoff", sa.Date(), nullable=True),
        sa.Column("decision", sa.String(16), nullable=True),
        sa.Column("promoted_version", sa.Integer(), nullable=True),
        sa.Column("champion_version", sa.Integer(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_nightly_runs"),
        sa.UniqueConstraint("ticker", "as_of", name="uq_nightly_runs_ticker_as_of"),
        sa.CheckConstraint(
            "status IN ('running', 'done', 'failed')", name="ck_nightly_runs_status"
        ),
    )
    op.create_table(
        "promotions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticker", sa.String(32), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("candidate", sa.String(64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=True),
        sa.Column("run_ids", sa.JSON(), nullable=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_promotions"),
        sa.CheckConstraint(
            "action IN ('promote', 'keep', 'manual-promote', 'rollback')",
            name="ck_promotions_action",
        ),
    )
    op.create_index("ix_promotions_ticker_created_at", "promotions", ["ticker", "created_at"])
    op.create_table(
        "forecasts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticker", sa.String(32), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("target_date", sa.Date(), nullable=False),
        sa.Column("predicted_close", sa.Double(), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("is_baseline", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actual_close", sa.Double(), nullable=True),
        sa.Column("error", sa.Double(), nullable=True),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_forecasts"),
        sa.UniqueConstraint(
            "ticker", "as_of", "target_date", name="uq_forecasts_ticker_as_of_target_date"
        ),
    )
    op.create_index("ix_forecasts_ticker_target_date", "forecasts", ["ticker", "target_date"])
    op.create_table(
        "forecast_scores",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ticker", sa.String(32), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("first_target_date", sa.Date(), nullable=False),
        sa.Column("last_target_date", sa.Date(), nullable=False),
        sa.Column("n_days", sa.Integer(), nullable=False),
        sa.Column("rmse", sa.Double(), nullable=False),
        sa.Column("mape", sa.Double(), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("is_baseline", sa.Boolean(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_forecast_scores"),
        sa.UniqueConstraint("ticker", "as_of", name="uq_forecast_scores_ticker_as_of"),
    )


def downgrade() -> None:
    op.drop_table("forecast_scores")
    op.drop_index("ix_forecasts_ticker_target_date", table_name="forecasts")
    op.drop_table("forecasts")
    op.drop_index("ix_promotions_ticker_created_at", table_name="promotions")
    op.drop_table("promotions")
    op.drop_table("nightly_runs")
