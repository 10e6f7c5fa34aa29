"""What every entry point does around its stage function: logging and one-line errors."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from fmnist_mlops.errors import ProjectError


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


def run(stage: str, fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Call ``fn(cfg)``; print its result as JSON; turn a :class:`ProjectError` into exit 2."""
    setup_logging()
    try:
        result = fn(cfg)
    except ProjectError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    if result is not None:
        print(json.dumps(result, default=str))
    return result
