"""`make serve` / `make serve-stop`: only the server this checkout started is ever stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from helpers import ROOT

from fmnist_mlops.serving.model_server import port_in_use


def model_server(cwd, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "serve.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.2)


def http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def test_a_foreign_program_on_the_port_is_named_and_left_alone(
    tmp_path, subprocess_env, free_tcp_port
):
    port = free_tcp_port
    foreign = subprocess.Popen(
        http_server(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: port_in_use(port))
        stopped = model_server(tmp_path, subprocess_env, "stop", "--port", str(port))
        assert stopped.returncode == 0
        assert f"held by pid {foreign.pid}" in stopped.stderr and "left alone" in stopped.stderr
        started = model_server(tmp_path, subprocess_env, "start", "--port", str(port), "--", "true")
        assert started.returncode == 2
        [line] = started.stderr.strip().splitlines()
        assert line.startswith(f"serve: error: PORT={port} is held by pid {foreign.pid}")
        assert foreign.poll() is None, "the foreign server still runs"
    finally:
        foreign.kill()
        foreign.wait()


def test_serve_records_its_server_and_serve_stop_stops_exactly_that(
    tmp_path, subprocess_env, free_tcp_port
):
    port = free_tcp_port
    cmd = [
        sys.executable,
        str(ROOT / "src" / "serve.py"),
        "start",
        "--port",
        str(port),
        "--",
    ]

    def make_serve() -> subprocess.Popen:
        return subprocess.Popen(
            [*cmd, *http_server(port)],
            cwd=tmp_path,
            env=subprocess_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    ours = make_serve()
    try:
        wait_until(lambda: port_in_use(port))
        record = json.loads((tmp_path / ".serve" / f"port-{port}.json").read_text())
        assert record["owner"]["pid"] == ours.pid  # exec kept the pid: the record is the server

        # `make serve` again: the previous server of this checkout is replaced
        again = make_serve()
        ours.wait(timeout=30)
        wait_until(lambda: port_in_use(port))
        stopped = model_server(tmp_path, subprocess_env, "stop", "--port", str(port))
        assert "stopped the model server" in stopped.stdout
        again.wait(timeout=30)
        assert not port_in_use(port) and not (tmp_path / ".serve" / f"port-{port}.json").exists()
        nothing = model_server(tmp_path, subprocess_env, "stop", "--port", str(port))
        assert nothing.returncode == 0 and not nothing.stdout and not nothing.stderr
    finally:
        for proc in (ours,):
            if proc.poll() is None:
                proc.kill()
