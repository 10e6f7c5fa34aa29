"""Who owns a run or a folder: host + pid + process start time, and whether that owner lives.

A pid alone is not an identity (pids are reused), so every owner record carries the process's
start time as well. An owner on another host cannot be checked from here and counts as alive:
only what is provably dead is ever taken over or deleted.
"""

from __future__ import annotations

import os
import socket
from typing import Any

# Start times are compared with this tolerance (psutil reports them with jiffy resolution).
_START_TOLERANCE_S = 1.0


def process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of process ``pid``, or None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def current() -> dict[str, Any]:
    """This process as an owner record: ``host``, ``pid``, ``process_start``."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": process_start(pid)}


def tags() -> dict[str, str]:
    """This process as an MLflow run's owner: ``host``, ``pid`` and ``process_start`` tags."""
    me = current()
    return {
        "host": me["host"],
        "pid": str(me["pid"]),
        "process_start": f"{me['process_start']:.3f}",
    }


def is_alive(owner: dict[str, Any]) -> bool:
    """Whether the process an owner record names is still running.

    Owners on other hosts count as alive (they cannot be checked from here); a record without
    a readable pid or start time counts as dead.
    """
    if owner.get("host") != socket.gethostname():
        return True
    try:
        pid, started = int(owner["pid"]), float(owner["process_start"])
    except (KeyError, TypeError, ValueError):
        return False
    now = process_start(pid)
    return now is not None and abs(now - started) < _START_TOLERANCE_S


def describe(owner: dict[str, Any]) -> str:
    """``pid 123 on host`` for messages."""
    return f"pid {owner.get('pid')} on {owner.get('host')}"
