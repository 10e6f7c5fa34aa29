"""``train.distribute=mirrored``: MirroredStrategy over 2 logical CPU devices, like the default."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT, training_metric_keys, venv_env
from mlflow.tracking import MlflowClient


def train_cli(tmp_path, prepared, *overrides: str) -> dict:
    # A fresh process: logical devices can only be set before TensorFlow starts up.
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "train.py"),
            "+experiment=smoke",
            f"paths.prepared={prepared}",
            f"paths.scratch={tmp_path / 'scratch'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "train.verbose=0",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=venv_env(),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_mirrored_over_two_cpu_devices_trains_and_logs_like_the_default(tmp_path, smoke_prepared):
    default = train_cli(tmp_path, smoke_prepared)
    mirrored = train_cli(
        tmp_path, smoke_prepared, "train.distribute=mirrored", "train.cpu_replicas=2"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = {name: client.get_run(r["run_id"]) for name, r in (("d", default), ("m", mirrored))}
    assert runs["m"].data.tags["distribute.replicas"] == "2"
    assert runs["d"].data.tags["distribute.replicas"] == "1"
    assert runs["m"].data.params["train.distribute"] == "mirrored"
    for run in runs.values():
        assert run.info.status == "FINISHED"
    assert training_metric_keys(runs["m"]) == training_metric_keys(runs["d"])
    for key in ("loss", "val_accuracy"):
        steps = {
            n: [m.step for m in client.get_metric_history(r.info.run_id, key)]
            for n, r in runs.items()
        }
        assert steps["m"] == steps["d"] == [0, 1]
    artifacts = {
        n: sorted(f.path for f in client.list_artifacts(r.info.run_id)) for n, r in runs.items()
    }
    assert artifacts["m"] == artifacts["d"]
    # It learned: 2 epochs on 512 images are far above chance (0.1) either way.
    assert mirrored["val_accuracy"] > 0.4 and default["val_accuracy"] > 0.4
