"""Start and stop local servers: ``make serve`` restarts with the current @champion.

``make serve`` runs the model server through :func:`start`, which records it (pid + start
time) in ``.serve/`` of this checkout; ``make serve-stop`` stops only that recorded server,
never another program that happens to listen on the port.

A server started for a while (tests, the UI check, the serving benchmark) runs through
:func:`fmnist_mlops.runtime.processes.running` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

import psutil

from fmnist_mlops.runtime import owner
from fmnist_mlops.runtime.files import write_json
from fmnist_mlops.runtime.paths import serve_record


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


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port`` (no privileges needed)."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def holder(port: int) -> str:
    """What listens on ``port``, as far as this user may know."""
    try:
        procs = listeners(port)
    except psutil.AccessDenied:  # macOS without root: connections of others are hidden
        procs = []
    if not procs:
        return "another program"
    with contextlib.suppress(psutil.Error):
        return f"pid {procs[0].pid} ({' '.join(procs[0].cmdline())[:120]})"
    return f"pid {procs[0].pid}"


def _terminate_tree(pid: int, timeout: float) -> None:
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_running(p) for p in tree):
        time.sleep(0.1)
    for proc in tree:  # did not stop in time
        if _running(proc):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def _running(proc: psutil.Process) -> bool:
    # A process that exited but was not reaped yet (a zombie) is done: only its parent can
    # remove it (psutil.wait_procs waits for that, forever, when the parent is waiting on us).
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop(port: int, timeout: float = 20.0) -> bool:
    """Stop the model server this checkout started on ``port`` (``make serve``), if it runs.

    Only the process recorded by :func:`start` (checked by pid and start time) and its
    children are stopped; whatever else holds the port is left alone.

    Returns:
        True if a server was stopped.
    """
    path = serve_record(port)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    stopped = owner.is_alive(record["owner"])
    if stopped:
        _terminate_tree(int(record["owner"]["pid"]), timeout)
    path.unlink(missing_ok=True)
    return stopped


def start(port: int, cmd: list[str]) -> None:
    """Stop this checkout's previous server on ``port``, record this process, exec ``cmd``.

    ``exec`` keeps the pid and start time, so the record names the server itself.

    Raises:
        ConfigError: Something else holds the port.
    """
    from fmnist_mlops.runtime.errors import ConfigError

    stop(port)
    if port_in_use(port):
        raise ConfigError(
            f"PORT={port} is held by {holder(port)}, not a model server this checkout "
            "started: left alone; stop it yourself or choose another PORT"
        )
    path = serve_record(port)
    write_json(path, {"owner": owner.current(), "port": port, "cmd": cmd})
    os.execvp(cmd[0], cmd)
