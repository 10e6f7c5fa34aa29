"""A server process for the length of a block: started, waited for, stopped with its children.

The one start-wait-stop loop for every server the project starts for a while: the tests' MLflow,
model and proxy servers, the UI check, the serving benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


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
                stop_group(proc)


def stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """End ``proc`` and what it started (its process group): SIGTERM, SIGKILL after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
