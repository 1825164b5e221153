"""Facts about other processes of this machine, for the services' supervision and the training
processes of a worker."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def process_alive(pid: int) -> bool:
    """Running: neither gone nor a zombie its parent has not reaped yet (a zombie is gone for
    our purposes, once its last thread has exited). Another user's process counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        # A zombie whose other threads are still exiting still holds its files (a listening
        # socket keeps accepting): gone only once it is the last thread.
        if "State:\tZ" in status and "\nThreads:\t1\n" in status:
            return False
    return True


def gone_within(pid: int, seconds: float, *, poll: float = 0.02) -> bool:
    """Whether process `pid` is gone (or a zombie) within `seconds`."""
    deadline = time.monotonic() + seconds
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True
