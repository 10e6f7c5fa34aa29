"""Hydra multirun sweeps: one MLflow parent run, nested children, best child promoted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, read_only_rows, venv_env
from mlflow.tracking import MlflowClient

from fmnist_mlops import tracking

BAD_FILTERS = "[8,16,32,64,128]"  # five poolings do not fit 28x28: fails validation


def sweep_command(tmp_path, prepared, *args: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "-m",
        "+experiment=smoke",
        "train.verbose=0",
        f"paths.prepared={prepared}",
        f"paths.scratch={tmp_path / 'scratch'}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *args,
    ]


def sweep(tmp_path, prepared, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        sweep_command(tmp_path, prepared, *args),
        cwd=ROOT,
        env=venv_env(TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def client_for(tmp_path) -> MlflowClient:
    tracking.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return MlflowClient()


def runs_of(client: MlflowClient):
    experiment = client.get_experiment_by_name("fashion-mnist")
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.slow  # several real training processes
def test_sweep_nests_children_survives_a_failed_job_and_promotes_the_best(tmp_path, smoke_prepared):
    before = set(p.name for p in ROOT.iterdir())
    proc = sweep(tmp_path, smoke_prepared, f"model.filters=[8],[8,16],{BAD_FILTERS}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["sweep"]

    client = client_for(tmp_path)
    runs = runs_of(client)
    parents = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "model.filters=[8],[8,16]" in parent.data.tags["sweep.arguments"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 3 and len(runs) == 4
    by_filters = {r.data.tags["sweep.overrides"].split("model.filters=")[1]: r for r in children}
    assert set(by_filters) == {"[8]", "[8,16]", BAD_FILTERS}

    failed = by_filters[BAD_FILTERS]
    assert failed.info.status == "FAILED"
    assert "model.filters" in failed.data.tags["failure"]
    finished = [by_filters["[8]"], by_filters["[8,16]"]]
    assert all(r.info.status == "FINISHED" for r in finished)
    assert parent.data.metrics["children_finished"] == 2
    assert parent.data.metrics["children_failed"] == 1

    # The best child by validation accuracy (never test) was evaluated and registered.
    best = max(finished, key=lambda r: r.data.metrics["best_val_accuracy"])
    other = next(r for r in finished if r is not best)
    assert summary["best_run_id"] == best.info.run_id == parent.data.tags["best_run_id"]
    assert "test_accuracy" in client.get_run(best.info.run_id).data.metrics
    assert "test_accuracy" not in client.get_run(other.info.run_id).data.metrics
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.run_id == best.info.run_id and int(champion.version) == 1
    assert parent.data.tags["registry.decision"] == "promoted"
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(summary["test_accuracy"])

    # Hydra's per-job folders went to the temp dir, not into the repo.
    assert set(p.name for p in ROOT.iterdir()) == before
    assert (tmp_path / "fmnist-mlops-sweeps").is_dir()

    # A second sweep goes through the same promotion rule: not better by 1.0 -> kept.
    proc = sweep(tmp_path, smoke_prepared, "seed=1,2", "registry.min_delta=1.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads(proc.stdout.strip().splitlines()[-1])["sweep"]
    assert second["promoted"] is False and second["version"] == 2
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert int(champion.version) == 1


def test_sweep_where_every_job_fails_exits_nonzero_and_registers_nothing(tmp_path, smoke_prepared):
    proc = sweep(tmp_path, smoke_prepared, f"model.filters={BAD_FILTERS},[0]")
    assert proc.returncode == 1
    assert "no job finished" in proc.stderr
    client = client_for(tmp_path)
    runs = runs_of(client)
    parent = next(r for r in runs if r.data.tags.get("stage") == "sweep")
    assert parent.info.status == "FAILED"
    assert sorted(r.info.status for r in runs if r is not parent) == ["FAILED", "FAILED"]
    assert client.search_registered_models() == []


@pytest.mark.slow  # several real training processes
def test_parallel_jobs_through_the_joblib_launcher_nest_under_one_parent(tmp_path, smoke_prepared):
    proc = sweep(
        tmp_path,
        smoke_prepared,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model.filters=[8],[8,16]",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = client_for(tmp_path)
    runs = runs_of(client)
    [parent] = [r for r in runs if r.data.tags.get("stage") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and len(runs) == 3
    assert len({r.data.tags["pid"] for r in children}) == 2, "two worker processes"
    assert all(r.info.status == "FINISHED" for r in children)
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.run_id == parent.data.tags["best_run_id"]


def test_interrupted_sweep_leaves_no_run_running_and_registers_nothing(tmp_path, smoke_prepared):
    cmd = sweep_command(
        tmp_path, smoke_prepared, "seed=1,2,3", "train.epochs=200", "train.patience=200"
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=venv_env(TMPDIR=str(tmp_path)), stderr=subprocess.PIPE, text=True
    )
    # Ctrl-C once the first job's child run is training (parent + child in the store).
    deadline = time.monotonic() + 300
    while (
        time.monotonic() < deadline
        and len(read_only_rows(tmp_path / "mlflow.db", "select run_uuid from runs")) < 2
    ):
        time.sleep(0.5)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    client = client_for(tmp_path)
    runs = runs_of(client)
    parent = next(r for r in runs if r.data.tags.get("stage") == "sweep")
    assert parent.info.status == "KILLED"
    assert "interrupted" in parent.data.tags["failure"]
    assert [r.info.status for r in runs if r is not parent] == ["KILLED"]
    assert client.search_registered_models() == []
