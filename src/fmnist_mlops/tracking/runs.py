"""Runs already in the store: their owner, orphans marked KILLED, a finished training's record.

A run's owner is the process its ``host``/``pid``/``process_start`` tags name. Orphans are
RUNNING runs whose owner is gone. A process that continues a run (a resumed training, a
continued sweep or study) makes itself the owner *before* the run is RUNNING again: a training
starting meanwhile on this host marks orphans, and must never see the run RUNNING under the
previous, finished owner. A stage that only adds to a finished run (``evaluate``) logs to it by
id and leaves it FINISHED. A finished training's record is checked against the split a stage is
about to use.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.entities import RunTag

from fmnist_mlops.runtime import owner
from fmnist_mlops.tracking.databases import (
    hide_password,
)

log = logging.getLogger(__name__)

# A training run's tag per raw IDX file, ``data.sha256.<file>``: the SHA-256 it was trained on.
RAW_DIGEST_TAG = "data.sha256."


def _own(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
    """Tag ``run_id`` with this process as its owner (and ``tags``), in one store call."""
    merged = {**owner.tags(), **tags}
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in merged.items()])


def reopen(run_id: str, tags: Mapping[str, str] | None = None, **start: Any) -> Any:
    """Continue ``run_id`` in this process as its owner: the active run of ``mlflow.start_run``.

    Args:
        run_id: A run of the current store.
        tags: More tags to set with the owner's, before the run is RUNNING again.
        **start: Passed on to :func:`mlflow.start_run` (e.g. ``log_system_metrics``).
    """
    _own(mlflow.tracking.MlflowClient(), run_id, tags or {})
    return mlflow.start_run(run_id=run_id, **start)


def take_over(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
    """Make this process the owner of an interrupted parent run and mark it RUNNING again.

    Args:
        client: An MLflow client of the store.
        run_id: The parent run (a sweep's or a study's).
        tags: Its tags now (``run_tags(stage)``), set with the owner's.
    """
    _own(client, run_id, tags)
    if "failure" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "failure")
    client.update_run(run_id, status="RUNNING")


def mark_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process is gone (e.g. after SIGKILL).

    A run is orphaned when its recorded pid no longer exists or now belongs to a process that
    started at another time (pid reuse). Runs of other hosts are never touched.

    Returns:
        The ids of the runs marked KILLED.
    """
    client = mlflow.tracking.MlflowClient()
    host = socket.gethostname()
    marked = []
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.host = '{host}'",
        max_results=1000,
    )
    for run in runs:
        tags = run.data.tags
        if "pid" not in tags or "process_start" not in tags:
            continue
        if owner.is_alive(tags):
            continue
        # Read again just before marking: the run may have been taken over or ended since.
        now = client.get_run(run.info.run_id)
        if now.info.status != "RUNNING" or owner.is_alive(now.data.tags):
            continue
        pid = tags["pid"]
        client.set_tag(run.info.run_id, "killed_reason", f"process {pid} on {host} is gone")
        client.set_terminated(run.info.run_id, status="KILLED")
        log.warning(
            "tracking: run %s was left RUNNING by process %s, now gone: marked KILLED",
            run.info.run_id,
            pid,
        )
        marked.append(run.info.run_id)
    return marked


def run_exists(run_id: str) -> bool:
    """Whether ``run_id`` is a run of the current tracking store."""
    try:
        mlflow.tracking.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def run_record(run_id: str, split_meta: dict[str, Any]) -> dict[str, Any]:
    """What ``models/run.json`` holds for a finished train run, read from MLflow instead.

    Lets a later command (evaluation, promotion, a sweep's or a study's end) work on a run whose
    scratch folder is gone: the logged model, the best epoch and its validation scores are in
    the tracking store.

    Args:
        run_id: The train run.
        split_meta: The prepared split's ``meta.json``: the run must have been trained on it.

    Raises:
        ConfigError: ``run_id`` is not a finished train run of the current store, or it was
            trained with other data hashes or split settings than ``split_meta``'s.
    """
    from fmnist_mlops.runtime.errors import ConfigError

    client = mlflow.tracking.MlflowClient()
    where = hide_password(mlflow.get_tracking_uri())
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(
            f"run_id={run_id} is not a run of {where}: expected the id of a finished train run"
        ) from None
    stage, status = run.data.tags.get("stage"), run.info.status
    metrics = run.data.metrics
    if stage != "train" or status != "FINISHED" or "best_epoch" not in metrics:
        raise ConfigError(
            f"run_id={run_id} is a {status} {stage or 'untagged'} run: expected the id of a "
            "finished train run"
        )
    _check_trained_on(run, split_meta)
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=10
    )
    if not models:
        raise ConfigError(f"run_id={run_id} has no logged model in {where}: train it again")
    return {
        "run_id": run_id,
        "model_uri": f"models:/{models[0].model_id}",
        "best_epoch": int(metrics["best_epoch"]),
        "epochs_trained": int(metrics["epochs_trained"]),
        "val_loss": metrics["best_val_loss"],
        "val_accuracy": metrics["best_val_accuracy"],
        "fit_seconds": metrics.get("fit_seconds"),
    }


def _check_trained_on(run: Any, meta: dict[str, Any]) -> None:
    """Refuse to score a run on a split other than the one it was trained and validated on."""
    from fmnist_mlops.runtime.errors import ConfigError

    run_id = run.info.run_id
    logged = {k: v for k, v in run.data.tags.items() if k.startswith(RAW_DIGEST_TAG)}
    logged.update({k: v for k, v in run.data.params.items() if k.startswith("data.")})
    found = {f"{RAW_DIGEST_TAG}{name}": digest for name, digest in meta["sha256"].items()}
    found["data.val_split"] = str(meta["val_split"])
    found["data.split_seed"] = str(meta["split_seed"])
    found.update({f"data.max_{k}": str(v) for k, v in meta["max"].items()})
    for key, value in found.items():
        if key in logged and logged[key] != value:
            raise ConfigError(
                f"run_id={run_id} was trained with {key}={logged[key]}, the prepared split has "
                f"{value}: expected the data settings it was trained with (e.g. the same "
                "+experiment)"
            )
