"""Hydra multirun sweeps: one MLflow parent run, nested children, best child promoted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, TINY_MODEL, read_only_rows, venv_env
from mlflow.tracking import MlflowClient

from fmnist_mlops.tracking import store

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
    store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
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

    # Hydra's per-job folders went to the temp dir, and nothing else (no mlflow.db, no mlruns)
    # into the repo. Tests run beside this one and a tool's cache folder is theirs, not the sweep's.
    new = set(p.name for p in ROOT.iterdir()) - before
    assert not {n for n in new if not n.endswith("_cache")}, new
    assert (tmp_path / "fmnist-mlops-sweeps").is_dir()

    # A second sweep goes through the same promotion rule: not better by 1.0 -> kept.
    proc = sweep(tmp_path, smoke_prepared, "seed=1,2", "registry.min_delta=1.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads(proc.stdout.strip().splitlines()[-1])["sweep"]
    assert second["promoted"] is False and second["version"] == 2
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert int(champion.version) == 1


@pytest.mark.integration
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


@pytest.mark.integration
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


def job_run(tmp_path, job: str) -> str | None:
    """The run of sweep job ``job`` once it has logged an epoch (read-only: the sweep writes)."""
    found = read_only_rows(
        tmp_path / "mlflow.db",
        "select t.run_uuid from tags t join metrics m on m.run_uuid = t.run_uuid "
        f"where t.key = 'sweep.job' and t.value = '{job}' and m.key = 'val_loss'",
    )
    return found[0][0] if found else None


@pytest.mark.slow  # three trainings, one interrupted and continued
def test_a_rerun_of_an_interrupted_sweep_continues_it_and_picks_the_best_of_all_jobs(
    tmp_path, smoke_prepared
):
    """Ctrl-C during job #1, then the same command: the same parent run, job #0 not trained
    again, job #1 resumed under that parent, the winner chosen among all three jobs."""
    args = (
        *TINY_MODEL,
        "train.lr=0.00001,0.004,0.00002",
        "train.epochs=6",
        "train.patience=6",
        "train.batch_size=8",
    )
    cmd = sweep_command(tmp_path, smoke_prepared, *args)
    env = venv_env(TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while job_run(tmp_path, "1") is None and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    client = client_for(tmp_path)
    [parent] = [r for r in runs_of(client) if r.data.tags.get("stage") == "sweep"]
    assert parent.info.status == "KILLED"
    first = {
        r.data.tags["sweep.job"]: r for r in runs_of(client) if r.info.run_id != parent.info.run_id
    }
    assert first["0"].info.status == "FINISHED" and first["1"].info.status == "KILLED"

    again = sweep(tmp_path, smoke_prepared, *args)  # the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing the interrupted sweep {parent.info.run_id}" in again.stderr
    summary = json.loads(again.stdout.strip().splitlines()[-1])["sweep"]
    runs = runs_of(client)
    assert [r.info.run_id for r in runs if r.data.tags.get("stage") == "sweep"] == [
        parent.info.run_id
    ], "one sweep, one parent"
    children = {r.data.tags["sweep.job"]: r for r in runs if r.info.run_id != parent.info.run_id}
    assert sorted(children) == ["0", "1", "2"] and len(runs) == 4, "job #0 not trained again"
    assert children["0"].info.run_id == first["0"].info.run_id
    assert f"run {first['0'].info.run_id} of this sweep trained this job already" in again.stderr
    resumed = children["1"]
    assert resumed.info.run_id == first["1"].info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "resumed_after_epoch" in resumed.data.tags
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "val_loss")]
    assert steps == list(range(6)), "every epoch once"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())

    best = max(children.values(), key=lambda r: r.data.metrics["best_val_accuracy"])
    assert best.info.run_id == resumed.info.run_id, "lr=0.004 is by far the best here"
    assert summary["children_finished"] == 3 and summary["best_run_id"] == best.info.run_id
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.run_id == best.info.run_id

    # A finished sweep is not continued: the same command starts a new one, training anew.
    third = sweep(tmp_path, smoke_prepared, *args)
    assert third.returncode == 0, third.stderr[-3000:]
    parents = [r for r in runs_of(client) if r.data.tags.get("stage") == "sweep"]
    assert len(parents) == 2 and len(runs_of(client)) == 8
