"""Facts about other processes of this machine, for the services' supervision and the training
processes of a worker."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Running: neither gone nor a zombie its parent has not reaped yet (a zombie is gone for
    our purposes). Another user's process counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if "State:\tZ" in Path(f"/proc/{pid}/status").read_text():
            return False
    return True
