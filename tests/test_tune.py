"""The Optuna tuner: nested trials, pruning, a resumable study, promotion of the best trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from helpers import ROOT, read_only_rows, train, venv_env
from mlflow.tracking import MlflowClient

from fmnist_mlops.tracking import store
from fmnist_mlops.tracking.context import open_stage
from fmnist_mlops.tracking.databases import sqlalchemy_url

# Small enough for the smoke split: the default space with 3-epoch trials.
TUNE_ARGS = (
    "+experiment=smoke",
    "train.verbose=0",
    "train.epochs=3",
    "tune.pruner.n_startup_trials=1",
    "tune.pruner.n_warmup_steps=0",
)


def tune_cmd(tmp_path, prepared, *args: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "src" / "tune.py"),
        *TUNE_ARGS,
        f"paths.prepared={prepared}",
        f"paths.scratch={tmp_path / 'scratch'}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *args,
    ]


def run_tune(tmp_path, prepared, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        tune_cmd(tmp_path, prepared, *args),
        cwd=ROOT,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def finished_trials(tmp_path) -> int:
    rows = read_only_rows(
        tmp_path / "optuna.db", "select count(*) from trials where state in ('COMPLETE', 'PRUNED')"
    )
    return rows[0][0] if rows else 0


def load_study(tmp_path) -> optuna.Study:
    return optuna.load_study(study_name="fmnist-cnn", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


@pytest.mark.slow  # several real training processes
def test_tuner_resumes_after_an_interrupt_nests_trials_and_promotes_the_best(
    tmp_path, smoke_prepared
):
    # First run, interrupted (Ctrl-C) once a trial has finished.
    proc = subprocess.Popen(
        tune_cmd(tmp_path, smoke_prepared, "tune.n_trials=4"),
        cwd=ROOT,
        env=venv_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    finished = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    while time.monotonic() < deadline and finished_trials(tmp_path) == 0:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    study = load_study(tmp_path)
    done_before = len(study.get_trials(states=finished))
    assert 1 <= done_before < 4
    parent = study.user_attrs["mlflow_parent_run_id"]
    store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    assert client.get_run(parent).info.status == "KILLED"

    # The same command again resumes the same study and parent run up to 4 finished trials.
    done = run_tune(tmp_path, smoke_prepared, "tune.n_trials=4")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    study = load_study(tmp_path)
    trials = study.get_trials(states=finished)
    assert len(trials) == 4 and summary["parent_run_id"] == parent
    assert study.user_attrs["mlflow_parent_run_id"] == parent
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)

    experiment = client.get_experiment_by_name("fashion-mnist")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("stage") == "tune"]
    assert [r.info.run_id for r in parents] == [parent]
    assert client.get_run(parent).info.status == "FINISHED"
    children = {
        r.data.tags["optuna.trial"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent
    }
    for trial in trials:
        child = children[str(trial.number)]
        assert child.info.run_id == trial.user_attrs["mlflow_run_id"]
        assert child.data.tags["optuna.state"] == trial.state.name
        # Every epoch's validation accuracy went to the pruner, as logged to MLflow.
        logged = client.get_metric_history(child.info.run_id, "val_accuracy")
        assert {m.step: m.value for m in logged} == trial.intermediate_values
        for key, value in trial.params.items():
            assert f"{key}={value}".replace(" ", "").lower() in child.data.tags[
                "sweep.overrides"
            ].lower().replace(" ", "")

    # Parent: the optimisation-history plot and the best params; the best trial promoted.
    artifacts = {a.path for a in client.list_artifacts(parent, "tune")}
    assert artifacts == {"tune/optimization_history.png", "tune/best_params.json"}
    best = study.best_trial
    assert summary["best"]["trial"] == best.number
    assert best.value == max(t.value for t in study.get_trials(states=(finished[0],)))
    best_run = best.user_attrs["mlflow_run_id"]
    assert client.get_run(parent).data.tags["best_run_id"] == best_run
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.run_id == best_run
    # The test set was used once, for the chosen trial only.
    tested = [
        r
        for r in children.values()
        if "test_accuracy" in client.get_run(r.info.run_id).data.metrics
    ]
    assert [r.info.run_id for r in tested] == [best_run]


@pytest.mark.integration
def test_pruning_callback_stops_a_trial_worse_than_the_median(smoke_cfg):
    from fmnist_mlops.experiments.tuning import OptunaPruning

    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    dist = optuna.distributions.FloatDistribution(0, 1)
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.5},
            distributions={"x": dist},
            value=0.99,
            intermediate_values={0: 0.99, 1: 0.99, 2: 0.99},
        )
    )
    trial = study.ask()
    pruning = OptunaPruning(trial, "val_accuracy")
    smoke_cfg.train.epochs = 3
    result = train(open_stage(smoke_cfg), callbacks=[pruning])
    assert pruning.pruned_at == 0
    assert result["epochs_trained"] == 1
    assert list(trial.storage.get_trial(trial._trial_id).intermediate_values) == [0]


def test_bad_tuner_settings_fail_in_one_line_before_anything_is_written(tmp_path, smoke_prepared):
    proc = run_tune(tmp_path, smoke_prepared, "tune.n_trials=0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "tune: error: tune.n_trials=0 is invalid: expected an integer > 0"
    ]
    proc = run_tune(
        tmp_path, smoke_prepared, "tune.storage=postgresql://fm:s3cret@127.0.0.1:9/none"
    )
    assert proc.returncode == 2
    [last] = proc.stderr.strip().splitlines()
    assert last.startswith("tune: error: tune.storage: cannot reach ")
    assert "127.0.0.1:9/none" in last
    assert "s3cret" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.db").exists()


@pytest.mark.slow  # several real training processes
def test_two_tuners_share_one_study_in_postgresql(tmp_path, smoke_prepared, postgres):
    name = f"shared-{uuid.uuid4().hex[:8]}"
    args = ("tune.n_trials=4", f"tune.study_name={name}", f"tune.storage={postgres}")
    procs = [
        subprocess.Popen(
            tune_cmd(tmp_path, smoke_prepared, *args),
            cwd=ROOT,
            env=venv_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name=name, storage=sqlalchemy_url(postgres))
    finished = study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    # Each tuner checks the shared count before it starts a trial: at most one extra.
    assert 4 <= len(finished) <= 5
    store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("fashion-mnist")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    [parent] = [r for r in runs if r.data.tags.get("stage") == "tune"]
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(study.trials) == len(runs) - 1
    assert len({r.data.tags["pid"] for r in children}) == 2, "both tuners ran trials"
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.run_id == study.best_trial.user_attrs["mlflow_run_id"]


@pytest.mark.integration
def test_a_study_where_every_trial_fails_raises_and_registers_nothing(tmp_path, smoke_prepared):
    from omegaconf import OmegaConf

    from fmnist_mlops.config.commands import validate_tune
    from fmnist_mlops.config.compose import compose
    from fmnist_mlops.experiments.tuning import TuningFailed, tune
    from fmnist_mlops.registry.stages import promote_child

    overrides = [
        "+experiment=smoke",
        f"paths.prepared={smoke_prepared}",
        f"paths.scratch={tmp_path / 'scratch'}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    tune_cfg = OmegaConf.load(ROOT / "conf" / "tune" / "default.yaml")
    tune_cfg.n_trials = 2
    # kernel_size 9 is outside the schema's [1, 7]: every trial fails its validation.
    tune_cfg.space = {"model.kernel_size": {"type": "categorical", "choices": [9]}}
    try:
        tune(
            open_stage(compose(overrides)), validate_tune(tune_cfg), overrides, train, promote_child
        )
    except TuningFailed as exc:
        assert "2 failed" in str(exc)
    else:
        raise AssertionError("expected TuningFailed")
    study = load_study(tmp_path)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FAILED"
    assert client.search_registered_models() == []


def test_a_ctrl_c_between_ask_and_training_fails_the_trial_instead_of_leaving_it_running(
    monkeypatch,
):
    # The resume test's Ctrl-C comes right after a trial finishes, i.e. often while the next
    # one is being sampled or composed: that trial must end FAIL, not stay RUNNING forever.
    from omegaconf import OmegaConf

    from fmnist_mlops.experiments import tuning
    from fmnist_mlops.runtime.errors import Interrupted

    def interrupted(trial, space):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(tuning, "sample", interrupted)
    study = optuna.create_study(direction="maximize")
    with pytest.raises(Interrupted):
        tuning._run_trial(
            study,
            OmegaConf.create({"space": {}}),
            [],
            "parent",
            "val_accuracy",
            lambda *a, **k: pytest.fail("sampling was interrupted: nothing may train"),
        )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]


@pytest.mark.slow  # several trials, one interrupted, the study continued
def test_a_rerun_of_an_interrupted_study_continues_it_without_repeating_a_trial(
    tmp_path, smoke_prepared
):
    """Ctrl-C during trial 1, then the same command: the new trials are new configurations,
    trial 1's parameters run again and resume its backup (the same MLflow run), and the live
    parent run is never marked KILLED while the rerun trains."""
    args = (
        "tune.n_trials=3",
        "tune.pruner.n_startup_trials=10",  # no pruning: every trial trains to its end
        "train.epochs=8",
        "train.patience=8",
    )
    cmd = tune_cmd(tmp_path, smoke_prepared, *args)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=venv_env(), stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    training_trial_1 = (
        "select t.run_uuid from tags t join metrics m on m.run_uuid = t.run_uuid "
        "where t.key = 'optuna.trial' and t.value = '1' and m.key = 'val_loss'"
    )
    deadline = time.monotonic() + 300
    while not read_only_rows(tmp_path / "mlflow.db", training_trial_1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    [(interrupted_run,)] = read_only_rows(tmp_path / "mlflow.db", training_trial_1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    study = load_study(tmp_path)
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]

    rerun = subprocess.Popen(
        cmd, cwd=ROOT, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    states = []  # the parent's states while the rerun works, as a UI would see them
    status = f"select status from runs where run_uuid = '{parent}'"
    while rerun.poll() is None:
        now = [r[0] for r in read_only_rows(tmp_path / "mlflow.db", status)]
        if now and (not states or states[-1] != now[0]):
            states.append(now[0])
        time.sleep(0.2)
    out, err = rerun.communicate()
    assert rerun.returncode == 0, err[-3000:]
    assert "RUNNING" in states and "KILLED" not in states[states.index("RUNNING") :], states
    assert f"run {parent} was left RUNNING" not in err

    study = load_study(tmp_path)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3
    configurations = [json.dumps(t.params, sort_keys=True) for t in complete]
    assert len(set(configurations)) == 3, "no configuration trained twice"
    [again] = [t for t in complete if t.user_attrs.get("resumes_trial") == 1]
    assert again.params == study.trials[1].params
    assert again.user_attrs["mlflow_run_id"] == interrupted_run, "its backup was resumed"
    assert f"resuming run {interrupted_run}" in err
    store.connect(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    run = client.get_run(interrupted_run)
    assert run.info.status == "FINISHED" and run.data.tags["optuna.trial"] == str(again.number)
    steps = [m.step for m in client.get_metric_history(interrupted_run, "val_loss")]
    assert steps == list(range(8)), "every epoch once"
    assert client.get_run(parent).info.status == "FINISHED"
    assert json.loads(out.strip().splitlines()[-1])["parent_run_id"] == parent
