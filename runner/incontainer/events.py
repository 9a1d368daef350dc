"""Event lines from nnU-Net's processes to the run folder (standard library only).

Used by :mod:`runner.incontainer.agent` and :mod:`runner.incontainer.preprocess` in the main
process and in every spawned worker.
"""
from __future__ import annotations

import json
import os
import time

EVENTS_ENV = "NNRUN_AGENT_EVENTS"

_fd: int | None = None


def emit(kind: str, **fields) -> None:
    """Append one event line.  O_APPEND keeps lines from different workers whole."""
    global _fd
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    try:
        if _fd is None:
            _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        record = {"t": round(time.time(), 3), "event": kind, "pid": os.getpid(), **fields}
        os.write(_fd, (json.dumps(record) + "\n").encode())
    except OSError:
        pass  # telemetry must never break the run


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")          # "5": reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass


def peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
