"""Start and stop local servers: ``make serve`` restarts with the current @champion.

:func:`running` is the one start-wait-stop loop for every server the project starts for a
while (tests, the UI check, the serving benchmark).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil


@contextlib.contextmanager
def running(
    cmd: list[str], env: dict[str, str], ready_url: str, log_path: Path, timeout: float = 120.0
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group until the block ends; wait for ``ready_url``.

    Raises:
        RuntimeError: if the process exits or ``ready_url`` does not answer 200 within
            ``timeout`` seconds (with the tail of its log).
    """
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(OSError):
                    if urllib.request.urlopen(ready_url, timeout=2).status == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{' '.join(cmd[:3])} did not start:\n{Path(log_path).read_text()[-3000:]}"
                    )
                time.sleep(0.5)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


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
