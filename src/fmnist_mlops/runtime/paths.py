"""Where things live: stage outputs, the repository and store roots, and what sits beside them.

The folders and lock files kept beside the store (backups, scratch, locks, servers) are named
here and nowhere else. A leaf: imports nothing of the project, so every layer may use it.
Writing files is :mod:`fmnist_mlops.runtime.files`' job.
"""

from __future__ import annotations

import os
from pathlib import Path

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


def backups_root(uri: str) -> Path:
    """Where training backups live for the store at ``uri``.

    Beside a SQLite database (so each store has its own backups), else in the repository.
    """
    return (sqlite_dir(uri) or store_root()) / ".backups"


def scratch_root(configured: str | os.PathLike) -> Path:
    """Return ``paths.scratch`` as a folder; a relative path is taken from the repository.

    The repository, not DVC's temporary experiment workspaces, which DVC deletes.
    """
    p = Path(os.path.expanduser(str(configured)))
    return p if p.is_absolute() else store_root() / p


def registry_lock_file(name: str) -> Path:
    """The host-wide lock one registry mover of model ``name`` holds at a time."""
    return store_root() / ".locks" / f"registry-{name}.lock"


def store_open_lock_file(uri: str) -> Path:
    """The lock serialising the first opening of the SQLite store at ``uri``."""
    return sqlite_dir(uri) / ".locks" / f"{Path(uri).name}.open.lock"


def serve_record(port: int) -> Path:
    """Where ``make serve`` records the model server it started on ``port``."""
    return store_root() / ".serve" / f"port-{port}.json"
