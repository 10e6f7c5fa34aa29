"""Scratch folders: where ad-hoc runs write, owned by this checkout, safe to delete.

Ad-hoc runs (``paths.out: null``) and run-id evaluations write their files into a fresh folder
under ``paths.scratch`` (default ``<repository>/scratch``). Nothing later reads them: runs,
models, metrics and configs are in MLflow, so they are a cache. Each folder records its owner
process, and ``make clean`` (``src/clean.py``) removes every folder whose
owner is gone, leaving live runs' folders alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from fmnist_mlops.runtime import owner
from fmnist_mlops.runtime.files import write_json
from fmnist_mlops.runtime.folders import writable_dir
from fmnist_mlops.runtime.paths import resolve, scratch_root

OWNER_FILE = ".owner.json"


def new_folder(configured: str | os.PathLike, stage: str) -> Path:
    """Make a fresh scratch folder for ``stage``, owned by this process."""
    root = writable_dir("paths.scratch", scratch_root(configured))
    folder = Path(tempfile.mkdtemp(dir=root, prefix=f"{stage}-"))
    write_json(folder / OWNER_FILE, owner.current())
    return folder


def out_dir(configured: str | None, stage: str, scratch: str | os.PathLike) -> Path:
    """Return the folder a stage writes to.

    Args:
        configured: ``paths.out`` from the config; ``None`` means an ad-hoc run, which gets a
            fresh scratch folder so it cannot overwrite DVC-tracked outputs.
        stage: Stage name, used as the scratch folder's prefix.
        scratch: ``paths.scratch``, where that fresh folder is made.
    """
    if configured is None:
        return new_folder(scratch, stage)
    return writable_dir("paths.out", resolve(configured))


# A folder is written with its owner record right after it is made; one without a record
# is only spared while it could still be that new.
_UNOWNED_GRACE_S = 60.0


def _owner_alive(folder: Path) -> bool:
    try:
        record = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return time.time() - folder.stat().st_mtime < _UNOWNED_GRACE_S
    return owner.is_alive(record)


def clean(root: Path) -> tuple[list[Path], list[Path]]:
    """Remove the scratch folders under ``root`` whose owner process is gone.

    Returns:
        The folders removed and the folders kept because their owner still runs.
    """
    from fmnist_mlops.runtime.errors import ConfigError

    if root.exists() and not root.is_dir():
        raise ConfigError(f"paths.scratch={root} is a file: expected a folder (or nothing yet)")
    removed, kept = [], []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        if _owner_alive(folder):
            kept.append(folder)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed, kept
