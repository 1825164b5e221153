"""`mask_url` and `mask_secrets`: the one rule for secrets in URLs that are printed or stored."""

from __future__ import annotations

import pytest

from pricecast.urls import mask_secrets, mask_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg2://bob:hunter2@db:5432/prices",
            "postgresql+psycopg2://bob:***@db:5432/prices",
        ),
        ("http://mlflow:s3cret@127.0.0.1:5000/", "http://mlflow:***@127.0.0.1:5000/"),
        # An unencoded '@' in the password: everything up to the last '@' is userinfo.
        ("postgresql://bob:p@ss@db/x", "postgresql://bob:***@db/x"),
        (
            "postgresql://u@h/db?password=pw&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        (
            "https://api.example/v1?api_key=k&symbol=BTC",
            "https://api.example/v1?api_key=***&symbol=BTC",
        ),
    ],
)
def test_passwords_and_secret_parameters_are_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////tmp/x/pricecast.db",  # urlunsplit would turn the four slashes into one
        "http://127.0.0.1:4200/api",
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
        "not a url at all",
    ],
)
def test_urls_without_secrets_come_back_unchanged(url: str) -> None:
    assert mask_url(url) == url


def test_free_text_is_masked_wherever_a_url_appears() -> None:
    text = "connect to postgresql://a:b@h/db failed; retry http://x:y@z:1/ later"
    assert (
        mask_secrets(text)
        == "connect to postgresql://a:***@h/db failed; retry http://x:***@z:1/ later"
    )


def test_run_logs_have_passwords_masked_in_message_and_traceback() -> None:
    import io
    import logging

    from pricecast.urls import MaskSecretsFilter

    stream = io.StringIO()
    logger = logging.getLogger("test_urls.masked")
    logger.addHandler(logging.StreamHandler(stream))
    logger.addFilter(MaskSecretsFilter())
    logger.propagate = False
    try:
        try:
            raise RuntimeError("request to http://u:s3cret@mlflow:5000/api failed")
        except RuntimeError:
            logger.exception("run failed at %s", "postgresql://u:s3cret@db/prices")
    finally:
        logger.handlers.clear()
    text = stream.getvalue()
    assert "s3cret" not in text
    assert "run failed at postgresql://u:***@db/prices" in text
    assert "Traceback" in text and "http://u:***@mlflow:5000/api" in text
