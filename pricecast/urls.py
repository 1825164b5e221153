"""One rule for secrets in URLs: every URL that is printed, logged, tagged or stored goes through
`mask_url`, so a password in a database, MLflow or Prefect URL never leaves the process."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
#: Query parameters that carry a credential (psycopg2's `password=`, tokens in API URLs).
_SECRET_PARAMS = re.compile(r"pass(word)?|secret|token|api[_-]?key", re.IGNORECASE)
#: `user:password@` anywhere in a string, for URLs inside free text (error messages).
_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@")


def mask_url(url: str) -> str:
    """`url` with any password (userinfo or a secret query parameter) replaced by `***`.

    Works for SQLAlchemy URLs (`postgresql+psycopg2://u:pw@host/db`), HTTP URLs and anything
    else of the `scheme://user:password@host` form; a string that is no URL comes back as is.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask_secrets(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            user, _, _password = userinfo.partition(":")
            netloc = f"{user}:{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAMS.fullmatch(k) for k, _ in pairs):
            query = urlencode(
                [(k, MASK if _SECRET_PARAMS.fullmatch(k) else v) for k, v in pairs], safe="*"
            )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing secret; urlunsplit would also normalise `sqlite:////abs/path`
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def mask_secrets(text: str) -> str:
    """Free text (an error message, a log line) with every `scheme://user:password@` masked."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


class MaskSecretsFilter(logging.Filter):
    """A logger filter: the record's message and traceback with every URL password masked
    (for every handler of that logger: the console, a file, Prefect's API)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
            record.exc_info = None  # formatters would render it again, unmasked
        return True


#: Prefect's flow and task run loggers: what they get reaches its API (and database). A logger
#: filter sees only records logged on that very logger, which is how Prefect logs run records.
MASKED_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def mask_secrets_in_logs(names: tuple[str, ...] = MASKED_LOGGERS) -> None:
    """Install `MaskSecretsFilter` on the named loggers (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskSecretsFilter) for f in logger.filters):
            logger.addFilter(MaskSecretsFilter())
