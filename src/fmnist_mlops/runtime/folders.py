"""Folders a stage reads or writes, checked before any run exists: one line when unusable."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fmnist_mlops.runtime.errors import ConfigError, DataError
from fmnist_mlops.runtime.paths import RUN_FILE, resolve


def writable_dir(setting: str, folder: Path) -> Path:
    """Make sure ``folder`` (what ``setting`` names) exists and can be written, or refuse it.

    Raises:
        ConfigError: One line naming the setting, the folder and why it cannot be used.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise ConfigError(
            f"{setting}={str(folder)!r} cannot be used ({exc.strerror or exc}): expected a "
            "folder this user can write"
        ) from None
    return folder


def stage_dir(configured: str | None, stage: str) -> Path:
    """Return ``paths.out`` for stages that read what ``train`` wrote (it must be set)."""
    if configured is None:
        raise ConfigError(
            f"paths.out=None is invalid for {stage}: expected the folder `train` wrote to "
            f"('.' for the DVC pipeline, or the out_dir an ad-hoc train run printed), or name "
            "the run with run_id=<id>"
        )
    return resolve(configured)


def read_run(out: Path) -> dict[str, Any]:
    """Read ``models/run.json`` (MLflow run id, model URI, best epoch) written by ``train``."""
    path = out / RUN_FILE
    if not path.is_file():
        raise DataError(
            f"paths.out={out} holds no {RUN_FILE}: expected the folder `train` wrote to (run "
            "the train stage first: `dvc repro train`), or name the run with run_id=<id>"
        )
    return json.loads(path.read_text())
