"""What every entry point does around its stage function: logging and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from fmnist_mlops.errors import Interrupted, ProjectError


def setup_logging() -> None:
    """One line per event on stderr; the stage name starts each message."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("alembic", "mlflow", "absl", "h5py", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def die_with_parent() -> None:
    """Under DVC, get SIGTERM when ``dvc repro`` dies instead of training on as an orphan.

    DVC does not forward SIGTERM to the stage command; Linux can (``PR_SET_PDEATHSIG``).
    """
    if not os.environ.get("DVC_ROOT") or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # DVC died before the request was in place
        raise Interrupted(signal.SIGTERM)


def run(stage: str, fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Call ``fn(cfg)``; print its result as JSON.

    A :class:`ProjectError` becomes one line on stderr and exit 2; SIGTERM/SIGINT become
    :class:`Interrupted` (the stage marks its MLflow run KILLED) and exit 128 + signal number.
    """
    setup_logging()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)
    try:
        die_with_parent()
        result = fn(cfg)
    except ProjectError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as exc:
        print(f"{stage}: {exc}; nothing was registered", file=sys.stderr)
        sys.exit(128 + exc.signum)
    if result is not None:
        print(json.dumps(result, default=str))
    return result
