"""What the pipeline costs on top of the training: DVC's and MLflow's share.

``dvc repro -f`` vs the same work in one bare process (``benchmarks/bare_pipeline.py``), a no-op
``dvc repro``, and MLflow's cost per epoch.

Run by ``make bench`` (``benchmarks/training.py``) inside each repeat, so its ratios are taken
within the same minutes of the host as the training runs'.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from measure import BIN, ROOT, env, run_timed


def project_copy(tmp: Path) -> Path:
    """A fresh clone of the committed project (what a user gets), with this .venv on PATH."""
    dest = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    return dest


def run_pipeline_pair(clone: Path) -> dict:
    """``dvc repro -f``, a no-op ``dvc repro``, then the bare process: wall seconds each."""
    environ = env()
    repro = run_timed([str(BIN / "dvc"), "repro", "-f"], clone, environ)["seconds"]
    noop = run_timed([str(BIN / "dvc"), "repro"], clone, environ)["seconds"]
    bare = run_timed([sys.executable, str(ROOT / "benchmarks" / "bare_pipeline.py")], ROOT, environ)
    return {
        "repro_s": repro,
        "noop_s": noop,
        "bare_s": bare["seconds"],
        "bare_test_accuracy": json.loads(bare["lines"][-1][1])["test_accuracy"],
    }


def mlflow_cost(tmp: Path, epochs: int = 50) -> float:
    """Milliseconds per epoch for what MlflowEpochLogger sends (5 metrics, synchronous)."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'cost.db'}")
    with mlflow.start_run():
        mlflow.log_metrics({"warm": 0.0}, step=0, synchronous=True)
        started = time.perf_counter()
        for epoch in range(epochs):
            values = {k: 0.5 for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr")}
            mlflow.log_metrics(values, step=epoch, synchronous=True)
        return (time.perf_counter() - started) / epochs * 1e3
