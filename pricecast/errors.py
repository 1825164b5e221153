"""Errors a user can cause or fix. The CLI prints these as one line (no traceback unless --debug).

Each message says what went wrong, where (file and line, URL, table), and what to do.
"""


class PricecastError(Exception):
    """Base for every failure the user can act on."""


class DataError(PricecastError):
    """Input data is invalid: a bad file, a bad row, a bad date, too little history."""


class SourceError(PricecastError):
    """A price source could not be read: missing file, unknown format, HTTP failure."""


class ServiceUnavailable(PricecastError):
    """A service (database, MLflow, Prefect API) could not be reached or refused the request."""


class ConfigError(PricecastError):
    """A setting is wrong: a malformed URL, an unknown strategy, an impossible parameter."""


class LockTimeout(PricecastError):
    """Another run for the same ticker holds the lock and did not release it in time."""


class LockLost(PricecastError):
    """The per-ticker lock is no longer ours (its database session died, or another run took
    it since): what this run did after that was not committed."""


class TrainingFailed(PricecastError):
    """The training process's job raised an unexpected error; the message names the job's log."""


class TrainingProcessDied(TrainingFailed):
    """The training process was killed or exited in the middle of a job (a signal, the
    out-of-memory killer, a crash); the message names the job's own log."""
