"""A resumable Optuna study over the config, each trial a nested MLflow run.

``python src/tune.py tune.n_trials=20 tune.timeout_s=1800`` samples the search space in
``conf/tune/`` (Hydra override keys: config values and group choices such as ``model``),
composes each trial's config exactly as ``python src/train.py <overrides>`` would, and trains it
with the project's ``train``. Trials are judged on validation data only (``registry.metric``,
reported every epoch so the pruner can stop bad trials early). The study lives in an RDB
(default: ``optuna.db`` next to ``mlflow.db``), so running the same command again resumes it and
several processes, or machines with a PostgreSQL URL, can share it. At the end the best trial
goes through the promotion rule of ``dvc repro``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import optuna
from mlflow.tracking import MlflowClient

from fmnist_mlops.config.commands import TuneCfg
from fmnist_mlops.config.compose import compose
from fmnist_mlops.experiments.study import (
    FINISHED_STATES,
    INTERRUPTED_ATTR,
    PARENT_ATTR,
    finished_numbers,
    open_study,
    requeue_interrupted,
    sample,
    storage_url,
)
from fmnist_mlops.registry.rule import registry_lock
from fmnist_mlops.runtime import owner
from fmnist_mlops.runtime.errors import Interrupted, ProjectError
from fmnist_mlops.tracking import nesting
from fmnist_mlops.tracking.context import StageContext, open_stage
from fmnist_mlops.tracking.databases import hide_password
from fmnist_mlops.tracking.runs import run_exists, take_over
from fmnist_mlops.tracking.tags import run_tags

log = logging.getLogger(__name__)


class TuningFailed(ProjectError):
    """No trial of the study completed."""


class OptunaPruning(keras.callbacks.Callback):
    """Report the monitored validation metric every epoch; stop the fit when Optuna prunes."""

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        super().__init__()
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None
        self.reported: set[int] = set()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # noqa: D102
        value = (logs or {}).get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), epoch)
        self.reported.add(epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            self.model.stop_training = True


def _get_or_create_parent(
    study: optuna.Study, metric: str, tune_cfg: TuneCfg, url: str, experiment_id: str
) -> str:
    """The study's MLflow parent run: created with the study, reopened when it resumes."""
    client = MlflowClient()
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent and run_exists(parent):
        run = client.get_run(parent)
        if run.info.status != "RUNNING" or not owner.is_alive(run.data.tags):
            take_over(client, parent, run_tags("tune"))
        return parent
    run = client.create_run(
        experiment_id,
        run_name=f"tune {tune_cfg.study_name}",
        tags={**run_tags("tune"), "optuna.study": tune_cfg.study_name},
    )
    parent = run.info.run_id
    for key, value in {
        "study_name": tune_cfg.study_name,
        "storage": hide_password(url),
        "direction": study.direction.name.lower(),
        "metric": metric,
        "space": json.dumps(tune_cfg.space),
    }.items():
        client.log_param(parent, f"tune.{key}", value)
    study.set_user_attr(PARENT_ATTR, parent)
    return parent


def _log_study(client: MlflowClient, parent: str, study: optuna.Study) -> dict[str, Any] | None:
    """Optimisation-history plot, best params and counts on the parent run."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    for state, n in counts.items():
        client.log_metric(parent, f"trials_{state}", n)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None
    best = study.best_trial
    client.log_metric(parent, "best_value", best.value)
    client.set_tag(parent, "best_trial", str(best.number))
    client.set_tag(parent, "best_run_id", best.user_attrs.get("mlflow_run_id", ""))
    for key, value in best.params.items():
        client.set_tag(parent, f"best_param.{key}", str(value))
    client.log_text(
        parent,
        json.dumps({"trial": best.number, "value": best.value, "params": best.params}, indent=2),
        "tune/best_params.json",
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot_optimization_history(study)
        path = Path(tmp) / "optimization_history.png"
        ax.figure.set_size_inches(8, 4.5)
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=110)
        plt.close(ax.figure)
        client.log_artifact(parent, str(path), "tune")
    return {"trial": best.number, "value": best.value, "params": best.params}


def tune(
    ctx: StageContext,
    tune_cfg: TuneCfg,
    base_overrides: Sequence[str],
    train: Callable[..., dict[str, Any]],
    promote_child: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """Run (or resume) the study; promote its best trial.

    Args:
        ctx: The context of the project config the trials start from (its store, registry).
        tune_cfg: The tuner's validated settings (``commands.validate_tune``).
        base_overrides: The command line's project overrides (``config.project_overrides``);
            every trial composes its config from them plus its sampled values.
        train: Trains one trial (``training.train``); handed in by ``src/tune.py`` so the
            tuner stays below the training stage in the layers.
        promote_child: Evaluates the best trial and applies the promotion rule
            (``stages.promote_child``).

    Returns:
        Counts of trials, the best trial, its MLflow run and the registry decision.
    """
    # Each trial loads its logged model once to check it; TF calls that "retracing".
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    base_overrides = list(base_overrides)
    reg = ctx.config.registry
    url = storage_url(tune_cfg, ctx.tracking_uri)
    # Tuners started at once on one study must agree on it and on one parent run: the first
    # creates them under a lock (a file lock, or an advisory lock in the study's PostgreSQL
    # database). New Optuna tables and a new SQLite MLflow store would collide otherwise.
    lock_url = url if url.startswith("postgresql") else None
    with registry_lock(f"optuna-study-{tune_cfg.study_name}", lock_url, "tune.storage"):
        study = open_study(tune_cfg, reg, url)
        parent = _get_or_create_parent(study, reg.metric, tune_cfg, url, ctx.track())
        requeue_interrupted(study)
    client = MlflowClient()
    log.info(
        "tune: study %s in %s, MLflow parent run %s, %d trials so far",
        tune_cfg.study_name,
        hide_password(url),
        parent,
        len(study.trials),
    )
    started = time.monotonic()
    try:
        _run_trials(study, tune_cfg, base_overrides, parent, reg.metric, train)
    except Interrupted:
        client.set_terminated(parent, "KILLED")
        raise
    best = _log_study(client, parent, study)
    summary: dict[str, Any] = {
        "study": tune_cfg.study_name,
        "parent_run_id": parent,
        "trials": {
            s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
            for s in optuna.trial.TrialState
        },
        "wall_s": round(time.monotonic() - started, 1),
    }
    if best is None:
        client.set_terminated(parent, "FAILED")
        raise TuningFailed(
            f"no trial of study {tune_cfg.study_name} completed ({summary['trials']['fail']} "
            f"failed, {summary['trials']['pruned']} pruned): nothing evaluated or registered"
        )
    run_id = study.best_trial.user_attrs["mlflow_run_id"]
    try:
        # Tuners sharing the study pick the same best trial: one evaluates it at a time (its
        # run is reopened, RUNNING, meanwhile); the next finds it registered already.
        with registry_lock(f"optuna-study-{tune_cfg.study_name}", lock_url, "tune.storage"):
            promoted = promote_child(client, parent, client.get_run(run_id), ctx.config)
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return {**summary, "best": best, **promoted}


def _run_trials(study, tune_cfg, base_overrides, parent, metric, train) -> None:
    """Ask and train trials until the study has ``n_trials`` or the time is up."""
    started, attempts = time.monotonic(), 0
    while True:
        done = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
        if done >= tune_cfg.n_trials or attempts >= tune_cfg.n_trials:
            return
        if tune_cfg.timeout_s and time.monotonic() - started >= tune_cfg.timeout_s:
            log.info("tune: timeout of %s s reached", tune_cfg.timeout_s)
            return
        attempts += 1
        _run_trial(study, tune_cfg, base_overrides, parent, metric, train)


def _run_trial(
    study: optuna.Study,
    tune_cfg: TuneCfg,
    base_overrides: list[str],
    parent: str,
    metric: str,
    train: Callable[..., dict[str, Any]],
) -> None:
    trial = study.ask()
    try:
        _train_trial(study, trial, tune_cfg, base_overrides, parent, metric, train)
    except Interrupted:
        # Wherever the signal lands after ``ask`` (sampling, composing, training, logging), the
        # trial must not stay RUNNING in the study; if it was already told, leave it as it is.
        if trial.number not in finished_numbers(study):
            trial.set_user_attr(INTERRUPTED_ATTR, True)
        study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        raise


def _train_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    tune_cfg: TuneCfg,
    base_overrides: list[str],
    parent: str,
    metric: str,
    train: Callable[..., dict[str, Any]],
) -> None:
    trial_overrides = sample(trial, tune_cfg.space)
    log.info("tune: trial %d: %s", trial.number, " ".join(trial_overrides))
    pruning = OptunaPruning(trial, metric)
    tags = {
        **nesting.child_tags(parent, " ".join(trial_overrides), job=str(trial.number)),
        "mlflow.runName": f"trial {trial.number}",
        "optuna.study": tune_cfg.study_name,
        "optuna.trial": str(trial.number),
    }
    try:
        cfg = compose([*base_overrides, *trial_overrides])
        result = train(open_stage(cfg), tags=tags, callbacks=[pruning])
    except Exception as exc:  # a bad point of the space; the study goes on
        log.error("tune: trial %d failed: %s", trial.number, exc)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return
    trial.set_user_attr("mlflow_run_id", result["run_id"])
    # A trial that resumed an interrupted one's backup trained only the later epochs here:
    # the study gets the earlier ones from the run, so its history is the run's.
    for point in MlflowClient().get_metric_history(result["run_id"], metric):
        if point.step not in pruning.reported:
            trial.report(point.value, point.step)
    if pruning.pruned_at is not None:
        mlflow.MlflowClient().set_tag(result["run_id"], "optuna.state", "PRUNED")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        log.info("tune: trial %d pruned after epoch %d", trial.number, pruning.pruned_at)
        return
    mlflow.MlflowClient().set_tag(result["run_id"], "optuna.state", "COMPLETE")
    study.tell(trial, float(result[metric]))
    log.info("tune: trial %d %s %.4f", trial.number, metric, result[metric])
