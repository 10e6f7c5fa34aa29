"""Plain helpers the tests share (fixtures live in conftest.py, which tests never import)."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from fmnist_mlops.config import compose
from fmnist_mlops.data import SPECS
from fmnist_mlops.model_server import running as http_process  # noqa: F401 - for the tests

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_DATA = Path("/usr/share/datasets/fashion-mnist")
PIPELINE_OUTPUT_DIRS = ("data", "models", "reports")


def require_real_data() -> Path:
    missing = [s.filename for s in SPECS if not (SYSTEM_DATA / s.filename).is_file()]
    if missing:
        pytest.fail(
            f"real Fashion-MNIST missing in {SYSTEM_DATA} ({missing}): "
            "`apt-get install dataset-fashion-mnist` (make data does it as root)"
        )
    return SYSTEM_DATA


def venv_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first, no inherited MLflow URI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    # As a user runs them: MLflow turns on test-only session checks under PYTEST_CURRENT_TEST.
    env.pop("PYTEST_CURRENT_TEST", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # Temporary repos commit (DVC experiments too); CI machines may have no git identity.
    for key, value in (("GIT_AUTHOR_NAME", "fmnist test"), ("GIT_COMMITTER_NAME", "fmnist test")):
        env.setdefault(key, value)
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "test@fashion-mnist-mlops.invalid")
    env.update(extra)
    return env


def smoke_config(tmp: Path, prepared: Path, *overrides: str):
    cfg = compose(["+experiment=smoke", *overrides], config_dir=ROOT / "conf")
    with open_dict(cfg):
        cfg.paths.prepared = str(prepared)
        cfg.paths.out = str(tmp / "out")
        cfg.paths.scratch = str(tmp / "scratch")
        cfg.mlflow.tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
        cfg.train.verbose = 0
    return cfg


def copy_project(dest: Path) -> Path:
    """Copy the project's tracked and unignored files into ``dest`` as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        if rel.split("/")[0] in PIPELINE_OUTPUT_DIRS:
            continue  # like a fresh clone: the pipeline makes these
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = venv_env()
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)
    return dest


def yaml_dict(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path))


def read_only_rows(db_path: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` from a SQLite file another process is writing ([] until it can answer).

    Read-only on purpose: opening the store with Optuna or MLflow while the program under test
    creates its tables would race it through their schema migrations.
    """
    if not db_path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
