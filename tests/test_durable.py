"""Later commands read MLflow, the study and DVC outputs, never a scratch folder (a cache)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import optuna
import pytest
from helpers import ROOT, train
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from fmnist_mlops.config.compose import validate
from fmnist_mlops.experiments import sweep
from fmnist_mlops.tracking import nesting, store
from fmnist_mlops.tracking.context import open_stage
from fmnist_mlops.tracking.tags import run_tags

SCRIPTS = "src"


def cli(root, script: str, tmp_path, prepared, *args: str, env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(root / SCRIPTS / script),
            "+experiment=smoke",
            f"paths.prepared={prepared}",
            f"paths.scratch={tmp_path / 'scratch'}",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            *args,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def adhoc_cfg(smoke_cfg, tmp_path, *, seed: int = 42, epochs: int = 2, lr: float | None = None):
    cfg = smoke_cfg.copy()
    with open_dict(cfg):
        cfg.paths.out = None
        cfg.paths.scratch = str(tmp_path / "scratch")
        cfg.seed = seed
        cfg.train.epochs = epochs
        if lr is not None:
            cfg.train.lr = lr
    return cfg


@pytest.mark.integration
def test_ad_hoc_runs_write_into_the_configured_scratch_with_an_owner(smoke_cfg, tmp_path):
    result = train(open_stage(adhoc_cfg(smoke_cfg, tmp_path, epochs=1)))
    out = tmp_path / "scratch"
    folder = next(out.iterdir())
    assert result["out_dir"] == str(folder) and (folder / "models" / "model.keras").is_file()
    owner = json.loads((folder / ".owner.json").read_text())
    assert owner["pid"] > 0 and owner["process_start"] > 0


@pytest.mark.slow  # real CLI processes for evaluate, register, report and rollback
def test_evaluate_register_report_rollback_by_run_id_with_every_scratch_folder_gone(
    smoke_cfg, tmp_path, project_root, subprocess_env
):
    # A deliberately weak first model (1 epoch at a tiny rate) and a normal second one.
    weak = train(open_stage(adhoc_cfg(smoke_cfg, tmp_path, epochs=1, lr=1e-5)))
    good = train(open_stage(adhoc_cfg(smoke_cfg, tmp_path, seed=1)))
    shutil.rmtree(tmp_path / "scratch")

    def run(script, *args):
        prepared = smoke_cfg.paths.prepared
        return cli(project_root, script, tmp_path, prepared, *args, env=subprocess_env)

    # register before evaluate: refused in one line, nothing registered
    refused = run("register.py", f"run_id={weak['run_id']}")
    assert refused.returncode == 2 and "evaluate it first" in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("register: error: ") and len(line) < 300, line

    first = last_json(run("evaluate.py", f"run_id={weak['run_id']}"))
    assert first["run_id"] == weak["run_id"] and first["promotion"]["promote"] is True
    assert first["promotion"]["candidate_version"] == 1
    assert str(tmp_path / "scratch") in first["out_dir"]
    second = last_json(run("evaluate.py", f"run_id={good['run_id']}"))
    assert second["promotion"]["promote"] is True, second["promotion"]["reason"]
    assert second["promotion"]["champion_after"] == 2

    store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    for run_id in (weak["run_id"], good["run_id"]):
        assert "test_accuracy" in client.get_run(run_id).data.metrics

    # register.py by run id (again) goes through the rule: not better than itself -> kept
    again = last_json(run("register.py", f"run_id={good['run_id']}"))
    assert again["promote"] is False and again["champion_after"] == 2

    # a split other than the run's is refused (the default config's full split)
    other = run("evaluate.py", "data.max_test=128", f"run_id={good['run_id']}")
    assert other.returncode == 2 and "data" in other.stderr

    # every scratch folder gone again: the report and the rollback need none of them
    shutil.rmtree(tmp_path / "scratch")
    report = last_json(run("report.py", f"paths.out={tmp_path / 'report'}"))
    assert report["run_id"] == good["run_id"]
    assert (tmp_path / "report" / "reports" / "champion.html").is_file()
    back = last_json(run("rollback.py"))
    assert (back["from_version"], back["to_version"]) == (2, 1)
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.run_id == weak["run_id"]


@pytest.mark.integration
def test_end_of_sweep_promotion_reads_its_children_from_mlflow_only(
    smoke_cfg, tmp_path, monkeypatch
):
    base = adhoc_cfg(smoke_cfg, tmp_path)
    experiment_id = store.setup(validate(base).mlflow)
    client = MlflowClient()
    parent = client.create_run(experiment_id, tags=run_tags("sweep")).info.run_id
    # What the sweep callback sets for each job (the real jobs run in this process).
    monkeypatch.setenv(nesting.PARENT_ENV, parent)
    children = []
    for job, seed in enumerate((1, 2)):
        monkeypatch.setenv(nesting.JOB_ENV, str(job))
        monkeypatch.setenv(nesting.OVERRIDES_ENV, f"seed={seed}")
        children.append(train(open_stage(adhoc_cfg(smoke_cfg, tmp_path, seed=seed))))
    for key in (nesting.PARENT_ENV, nesting.JOB_ENV, nesting.OVERRIDES_ENV):
        monkeypatch.delenv(key)
    shutil.rmtree(tmp_path / "scratch")

    summary = sweep.finish(validate(base), parent)

    best = max(children, key=lambda r: r["val_accuracy"])
    assert summary["best_run_id"] == best["run_id"] and summary["children_finished"] == 2
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.tags["registry.decision"] == "promoted"
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.run_id == best["run_id"]
    tested = [
        r["run_id"] for r in children if "test_accuracy" in client.get_run(r["run_id"]).data.metrics
    ]
    assert tested == [best["run_id"]]


@pytest.mark.slow  # several real training processes
def test_a_study_extended_after_its_scratch_is_deleted_promotes_its_best_trial(
    tmp_path, smoke_prepared, project_root, subprocess_env
):
    args = (
        "train.verbose=0",
        "train.epochs=2",
        "tune.pruner.n_startup_trials=2",  # no pruning: every trial completes
    )

    def tune(n: int):
        return cli(
            project_root,
            "tune.py",
            tmp_path,
            smoke_prepared,
            *args,
            f"tune.n_trials={n}",
            env=subprocess_env,
        )

    first = last_json(tune(1))
    assert sum(first["trials"].values()) == 1
    shutil.rmtree(tmp_path / "scratch")

    extended = last_json(tune(2))

    study = optuna.load_study(
        study_name="fmnist-cnn", storage=f"sqlite:///{tmp_path / 'optuna.db'}"
    )
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2 and extended["parent_run_id"] == first["parent_run_id"]
    store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("fashion-mnist")
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{first['parent_run_id']}'"
    )
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [0, 1]
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    assert extended["best_run_id"] == best_run
    assert "test_accuracy" in client.get_run(best_run).data.metrics
    parent = client.get_run(first["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["registry.decision"] in ("promoted", "kept")
    assert parent.data.tags["registry.version"] == str(extended["version"])

    # Finishing the finished study again, all scratch gone: the best trial (whichever run made
    # it) is evaluated from MLflow and offered to the promotion rule once more.
    shutil.rmtree(tmp_path / "scratch")
    versions = len(client.search_model_versions("name='fashion-mnist-cnn'"))
    again = last_json(tune(2))
    assert again["best_run_id"] == best_run and sum(again["trials"].values()) == 2
    # the same run and weights are not registered twice
    assert again["version"] == extended["version"] and again["promoted"] is False
    assert len(client.search_model_versions("name='fashion-mnist-cnn'")) == versions


def test_clean_removes_only_scratch_folders_whose_owner_is_gone(tmp_path, subprocess_env):
    import os
    import socket
    import time

    from fmnist_mlops.runtime import owner
    from fmnist_mlops.tracking import scratch

    root = tmp_path / "scratch"
    live_proc = subprocess.Popen(["sleep", "60"])
    dead_proc = subprocess.Popen(["true"])
    dead_proc.wait()
    host = socket.gethostname()
    records = {
        "live": {
            "host": host,
            "pid": live_proc.pid,
            "process_start": owner.process_start(live_proc.pid),
        },
        "dead": {"host": host, "pid": dead_proc.pid, "process_start": time.time() - 5},
        # the pid is alive but started at another time: reused, the owner is gone
        "reused": {"host": host, "pid": os.getpid(), "process_start": 1.0},
        "other-host": {"host": host + "-elsewhere", "pid": 1, "process_start": 1.0},
    }
    try:
        for name, record in records.items():
            (root / name).mkdir(parents=True)
            (root / name / scratch.OWNER_FILE).write_text(json.dumps(record))
        (root / "unowned-old").mkdir()
        os.utime(root / "unowned-old", (time.time() - 3600, time.time() - 3600))
        proc = subprocess.run(
            [sys.executable, str(ROOT / "src" / "clean.py"), "--root", str(root)],
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in root.iterdir()) == ["live", "other-host"]
        assert "removed 3 scratch folders" in proc.stderr and "kept" in proc.stderr
    finally:
        live_proc.kill()
