"""The real `pricecast` CLI as a module, so tests run it as `python -m tests.flows.universe.cli_app`
from this interpreter (the subprocesses need no installed console script)."""

from __future__ import annotations

from flows.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
