"""The `pricecast` command line: the typer app, the command table and the error handling.

Each group of commands lives in its own module (data, models, nightly, ops, universe); heavy imports
(TensorFlow, MLflow, Prefect) happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click
import typer

from flows.cli import data as cli_data
from flows.cli import forecasts as cli_forecasts
from flows.cli import logs as cli_logs
from flows.cli import models as cli_models
from flows.cli import nightly as cli_nightly
from flows.cli import ops as cli_ops
from flows.cli import status as cli_status
from flows.cli import universe as cli_universe
from pricecast import __version__
from pricecast.errors import PricecastError
from pricecast.settings import apply_environment_defaults
from pricecast.urls import mask_secrets

app = typer.Typer(
    name="pricecast",
    help=(
        "Nightly retraining pipeline for weekly price forecasts.\n\n"
        "Ingest daily prices, group them into ISO weeks, train and score LSTM candidates against "
        "the champion and a naive baseline, track everything in MLflow and promote only what is "
        "really better. State lives in PRICECAST_HOME (default ./.pricecast) unless "
        "PRICECAST_DATABASE_URL, MLFLOW_TRACKING_URI or PREFECT_API_URL point elsewhere."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: paragraphs reflowed, flags without a metavar
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pricecast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Options that apply to every command."""


#: Every command, in the order `pricecast --help` lists them (the README's order).
COMMANDS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("ingest", cli_data.ingest_command),
    ("weeks", cli_data.weeks_command),
    ("backtest", cli_models.backtest_command),
    ("nightly", cli_nightly.nightly_command),
    ("forecast", cli_forecasts.forecast_command),
    ("accuracy", cli_forecasts.accuracy_command),
    ("champion", cli_models.champion_command),
    ("promote", cli_models.promote_command),
    ("rollback", cli_models.rollback_command),
    ("demo", cli_ops.demo_command),
    ("serve", cli_ops.serve_command),
    ("backfill", cli_ops.backfill_command),
    ("status", cli_status.status_command),
    ("deploy", cli_universe.deploy_command),
    ("worker", cli_universe.worker_command),
)
for _name, _command in COMMANDS:
    app.command(_name)(_command)
app.add_typer(cli_data.db_app)
app.add_typer(cli_universe.universe_app, name="universe")


def _describe_unexpected(exc: BaseException) -> str | None:
    """One line for failures users cause that reach us as library exceptions."""
    setting = _describe_bad_setting(exc)
    if setting is not None:
        return setting
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        return None
    if isinstance(exc, OperationalError):
        from pricecast.settings import get_settings

        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc).splitlines()[0]
        return (
            f"database unreachable at {get_settings().redacted_database_url}: {reason}. "
            "Start it (make up) or point PRICECAST_DATABASE_URL at a running server."
        )
    return None


def _describe_bad_setting(exc: BaseException) -> str | None:
    """A PRICECAST_* variable the settings refuse: which one, its value, why, what to do."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError) or exc.title != "Settings":
        return None
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        variable = "MLFLOW_TRACKING_URI" if field == "mlflow_tracking_uri" else f"PRICECAST_{field}"
        problems.append(f"{variable.upper()}={error.get('input')!r}: {error['msg']}")
    return (
        f"invalid setting {'; '.join(problems)}. Fix or unset it (the README's Configuration "
        "table lists the settings)."
    )


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines[:3]) if lines else "(no message)"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one clear line per user-caused failure; traceback with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    cli_logs.DEBUG = debug
    # Before any command imports Prefect: Prefect reads its settings when it is imported.
    apply_environment_defaults()
    try:
        code = app(args=args, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        code = 130
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing half-written is kept; rerun to continue", err=True)
        code = 130
    except PricecastError as exc:
        if debug:
            raise
        # One error line; a refused file's problems follow it, one line each.
        typer.echo(f"error: {mask_secrets(str(exc).strip()) or '(no message)'}", err=True)
        code = 1
    except Exception as exc:
        if debug:
            raise
        message = _describe_unexpected(exc)
        try:
            where = f" (traceback in {cli_logs.write_traceback(exc)}; --debug shows it)"
        except OSError:
            where = " (rerun with --debug for the traceback)"
        if message is None:
            message = f"unexpected {type(exc).__name__}: {_one_line(str(exc))}"
        typer.echo(f"error: {mask_secrets(message)}{where}", err=True)
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
