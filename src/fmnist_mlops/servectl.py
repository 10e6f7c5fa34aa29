"""Stop whatever serves on a port, so ``make serve`` restarts with the current @champion."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time

import psutil


def listeners(port: int, host: str = "127.0.0.1") -> list[psutil.Process]:
    """Processes listening on ``host:port`` (TCP)."""
    found = {}
    for conn in psutil.net_connections(kind="tcp"):
        if (
            conn.status == psutil.CONN_LISTEN
            and conn.laddr
            and conn.laddr.port == port
            and conn.laddr.ip in (host, "0.0.0.0", "::")
            and conn.pid
        ):
            found[conn.pid] = psutil.Process(conn.pid)
    return list(found.values())


def stop(port: int, timeout: float = 20.0) -> int:
    """Terminate the process groups listening on ``port``; returns how many were stopped.

    ``mlflow models serve`` runs uvicorn in a child process: ending the whole group ends both.
    """
    groups = set()
    for proc in listeners(port):
        try:
            groups.add(os.getpgid(proc.pid))
        except ProcessLookupError:
            continue
    own = os.getpgid(0)
    for pgid in groups - {own}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while listeners(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in listeners(port):  # did not stop in time
        proc.kill()
    return len(groups - {own})


def main(argv: list[str] | None = None) -> int:
    """``python -m fmnist_mlops.servectl stop --port 5001``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("action", choices=["stop"])
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    n = stop(args.port)
    if n:
        print(f"stopped the server on port {args.port} (it still served the previous @champion)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
