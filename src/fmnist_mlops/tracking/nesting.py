"""Parent and child runs: what a sweep's job knows of its parent; taking over a parent.

Kept apart from the sweep and the tuner (which evaluate and register at the end) so that
``train`` depends only on this small module.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.tracking.tags import run_tags, same_code

log = logging.getLogger(__name__)

PARENT_ENV = "FMNIST_MLOPS_SWEEP_PARENT"
JOB_ENV = "FMNIST_MLOPS_SWEEP_JOB"
OVERRIDES_ENV = "FMNIST_MLOPS_SWEEP_OVERRIDES"


def active() -> bool:
    """True inside a job of a sweep (the callback has opened a parent run)."""
    return bool(os.environ.get(PARENT_ENV))


def child_tags(
    parent: str | None = None, overrides: str | None = None, job: str | None = None
) -> dict[str, str]:
    """Tags nesting a run under a parent run: a sweep's (from the environment) or a study's.

    Empty outside a sweep when no ``parent`` is given.
    """
    parent = parent or os.environ.get(PARENT_ENV)
    if not parent:
        return {}
    overrides = overrides if overrides is not None else os.environ.get(OVERRIDES_ENV, "")
    return {
        "mlflow.parentRunId": parent,
        "sweep.job": job if job is not None else os.environ.get(JOB_ENV, ""),
        "sweep.overrides": overrides,
        "mlflow.runName": overrides[:250] or "defaults",
    }


def finished_run(config_hash: str) -> str | None:
    """In a job of a sweep: the sweep's child run that already trained this job, if any.

    That is a FINISHED child of the parent with the same config hash (the composed config,
    seed included, and the data) that ran the same code (commit and uncommitted change): a
    continued sweep does not train it again.
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent}' and tags.config_hash = '{config_hash}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.end_time DESC"],
    )
    return next((r.info.run_id for r in runs if same_code(r.data.tags)), None)


def job_hooks(cfg: DictConfig) -> dict[str, Any]:
    """``cli.run`` hooks for a job of a sweep: keep going after a failure (empty otherwise)."""
    if not active():
        return {}
    return {"on_error": lambda exc: record_failure(cfg, exc)}


def record_failure(cfg: DictConfig, exc: BaseException) -> None:
    """Make sure a failed job shows up as a FAILED child, even if it failed before its run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from fmnist_mlops.tracking import store

    parent, job = os.environ[PARENT_ENV], os.environ.get(JOB_ENV, "")
    try:
        # The config may be what failed validation: read the one key, unchecked.
        store.connect(store.tracking_uri(OmegaConf.select(cfg, "mlflow.tracking_uri")))
        client = MlflowClient()
        experiment_id = client.get_run(parent).info.experiment_id
        existing = client.search_runs(
            [experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent}' and tags.`sweep.job` = '{job}'",
        )
        if existing:
            run_id = existing[0].info.run_id
            if existing[0].info.status not in ("FAILED", "KILLED"):
                client.set_terminated(run_id, "FAILED")
        else:
            run_id = client.create_run(
                experiment_id, tags={**run_tags("train"), **child_tags()}
            ).info.run_id
            client.set_terminated(run_id, "FAILED")
        client.set_tag(run_id, "failure", str(exc)[:5000])
    except mlflow.exceptions.MlflowException as err:  # the sweep goes on regardless
        log.warning("sweep: could not record the failure of job %s: %s", job, err)
