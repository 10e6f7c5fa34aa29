"""``make train-workers N=2 ARGS=...``: one multi-worker training as N local processes.

Starts ``python src/train.py train.distribute=multi_worker ARGS`` N times on this machine,
each with its own ``TF_CONFIG`` (worker i listens on a free loopback port; worker 0 is the
chief, the only one that writes). The chief's output is this command's; the other workers'
standard output goes to standard error. When a worker fails or dies, the others are stopped
(SIGTERM, then SIGKILL after a grace period) so nothing waits on a dead peer; the chief marks
the run KILLED and the same command resumes it. SIGINT/SIGTERM to this command reach every
worker. Exit code: the chief's, or the first failure's if the chief succeeded.

Workers on several hosts are started by hand instead, each with ``TF_CONFIG`` (see README).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from fmnist_mlops.runtime.cli import setup_logging
from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.runtime.paths import project_root

log = logging.getLogger(__name__)

# Seconds the other workers get to end by themselves after SIGTERM, before SIGKILL.
GRACE = 90.0


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` right now (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_configs(hosts: Sequence[str]) -> list[str]:
    """The ``TF_CONFIG`` of each worker of a cluster of ``hosts`` (``host:port``), in order."""
    cluster = {"worker": list(hosts)}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(len(hosts))
    ]


def start_workers(workers: int, args: Sequence[str], host: str = "127.0.0.1") -> list[Any]:
    """Start the worker processes (worker 0 first); returns their ``Popen`` objects."""
    hosts = [f"{host}:{port}" for port in free_ports(workers, host)]
    procs = []
    for i, tf_config in enumerate(tf_configs(hosts)):
        cmd = [sys.executable, "src/train.py", "train.distribute=multi_worker", *args]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=project_root(),
                env={**os.environ, "TF_CONFIG": tf_config},
                stdout=None if i == 0 else sys.stderr,
                # Their own session: a terminal's Ctrl-C reaches them once, forwarded from here.
                start_new_session=True,
            )
        )
    return procs


def supervise(procs: list[Any], grace: float = GRACE) -> int:
    """Wait for every worker; once one fails, stop the rest. Returns the exit code."""
    stop_at: float | None = None
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.returncode not in (None, 0)]
        if failed and stop_at is None:
            stop_at = time.monotonic() + grace
            _signal_live(procs, signal.SIGTERM)
        if stop_at is not None and time.monotonic() > stop_at:
            _signal_live(procs, signal.SIGKILL)
        time.sleep(0.2)
    codes = [p.returncode for p in procs]
    return codes[0] or next((c for c in codes if c), 0)


def _signal_live(procs: list[Any], signum: int) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)


def with_prepared_split(args: Sequence[str]) -> list[str]:
    """``args``, pointing the workers at a prepared split that fits their ``data.*`` settings.

    ``paths.prepared`` named in ``args`` is used as it is (a mismatch is then refused by the
    workers). Otherwise, when the configured folder (``data/prepared``, DVC's output) holds
    another split, the split is prepared into a scratch folder of its own and used from there:
    DVC-tracked outputs are never overwritten.
    """
    args = list(args)
    if any(a.split("=", 1)[0].lstrip("+~") == "paths.prepared" for a in args):
        return args
    from fmnist_mlops.config.compose import compose, validate
    from fmnist_mlops.data.splits import split_settings
    from fmnist_mlops.runtime.paths import resolve, scratch_root

    cfg = compose(args)
    config = validate(cfg)
    if _fits(resolve(config.paths.prepared), config.data):
        return args
    settings = json.dumps(split_settings(config.data), sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    own = scratch_root(config.paths.scratch) / f"prepared-{digest}"
    if not _fits(own, config.data):
        from omegaconf import open_dict

        from fmnist_mlops.data.preparation import prepare

        with open_dict(cfg):
            cfg.paths.prepared = str(own)
        prepare(cfg)
    log.info(
        "train-workers: %s holds another split; these data.* settings use %s",
        config.paths.prepared,
        own,
    )
    return [*args, f"paths.prepared={own}"]


def _fits(folder, data_cfg) -> bool:
    from fmnist_mlops.data.splits import check_split
    from fmnist_mlops.runtime.errors import DataError

    try:
        meta = json.loads((folder / "meta.json").read_text())
        check_split(data_cfg, meta, folder)
    except (OSError, ValueError, DataError):
        return False
    return True


def launch(workers: int, overrides: list[str], host: str = "127.0.0.1") -> int:
    """Run one training as ``workers`` local processes; their worst exit code.

    Raises:
        ConfigError: fewer than two workers.
    """
    if workers < 2:
        raise ConfigError(f"N={workers}: a multi-worker training needs N >= 2 workers")
    setup_logging()
    procs = start_workers(workers, with_prepared_split(overrides), host)

    def forward(signum: int, frame: Any) -> None:
        _signal_live(procs, signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    return supervise(procs)
