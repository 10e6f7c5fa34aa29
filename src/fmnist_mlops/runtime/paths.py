"""Where things live, and the one way files are written: names, roots, atomic writers, locks.

A leaf: imports nothing of the project, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# What the stages write under paths.out (DVC: the repo root).
MODEL_FILE = Path("models/model.keras")
RUN_FILE = Path("models/run.json")
HISTORY_CSV = Path("reports/history.csv")
HISTORY_PNG = Path("reports/history.png")
METRICS_JSON = Path("reports/metrics.json")
PER_CLASS_JSON = Path("reports/per_class.json")
PREDICTIONS_CSV = Path("reports/test_predictions.csv")
CONFUSION_PNG = Path("reports/confusion_matrix.png")
MISCLASSIFIED_PNG = Path("reports/misclassified.png")
PROMOTION_JSON = Path("reports/promotion.json")


def project_root() -> Path:
    """Return the workspace root: the nearest folder at or above the cwd holding ``dvc.yaml``.

    Inside ``dvc exp run --temp`` or a queued experiment that is DVC's temporary copy of the
    repository, which is where the stage's outputs must go. Falls back to the cwd.
    """
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return cwd


def store_root() -> Path:
    """Return the folder that holds the MLflow store (``mlflow.db``, ``mlruns/``).

    The repository itself, even from DVC's temporary experiment workspaces
    (``<repo>/.dvc/tmp/exps/...``), which DVC deletes afterwards: runs logged there must land
    in the repository's store. DVC sets ``DVC_ROOT`` to the repository for stage commands.
    """
    env = os.environ.get("DVC_ROOT")
    if env:
        return Path(env).resolve()
    root = project_root()
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def sqlite_dir(uri: str) -> Path | None:
    """The folder holding a ``sqlite:///`` store's database file (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent


def resolve(path: str | os.PathLike) -> Path:
    """Resolve ``path`` (``~`` expanded) against the project root unless it is absolute."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else project_root() / p


@contextlib.contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """The one way files are published: write the yielded path, it replaces ``path`` at the end.

    The temporary file sits beside ``path`` (same file system, so the rename is atomic) and
    keeps its suffix (Keras and matplotlib choose the format by it). A reader, DVC included,
    sees the old file or the new one, never half of one; on an error the temporary is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic`)."""
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON atomically: a reader sees the old file or the new one."""
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """The one inter-process lock of this host: an exclusive ``flock`` on ``path``.

    The kernel drops it when the holder dies, so a killed process never leaves it stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
