"""Hydra multirun under one MLflow parent run, and promotion of the sweep's best child.

``python src/train.py -m 'model.filters=[16,32],[32,64]' train.lr=0.001,0.0005`` trains every
combination. :class:`MlflowSweepCallback` (registered in ``conf/config.yaml``) opens a parent
run before the first job; each job's ``train`` run is nested under it (``mlflow.parentRunId``)
and tagged with its override string. A job that fails is recorded as a FAILED child and the
sweep goes on. After the last job the best finished child by ``registry.metric`` (validation
data only) is evaluated and goes through the promotion rule of ``dvc repro``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.tracking import nesting
from fmnist_mlops.tracking.tags import run_tags

if TYPE_CHECKING:
    from fmnist_mlops.config.schema import Config

log = logging.getLogger(__name__)

# registry.metric -> the train run's metric for it (the best epoch's value).
CHILD_METRIC = {"val_accuracy": "best_val_accuracy", "val_loss": "best_val_loss"}


def _task_config(config: DictConfig) -> DictConfig:
    """The sweep's primary config without the ``hydra`` node, interpolations resolved."""
    cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def _best_child(client: Any, experiment_id: str, parent: str, metric: str, mode: str):
    key = CHILD_METRIC[metric]
    order = "DESC" if mode == "max" else "ASC"
    children = client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent}'",
        order_by=[f"metrics.`{key}` {order}"],
        max_results=10000,
    )
    finished = [r for r in children if r.info.status == "FINISHED" and key in r.data.metrics]
    failed = [r for r in children if r.info.status != "FINISHED"]
    return (finished[0] if finished else None), finished, failed


def finish(config: Config, parent: str) -> dict[str, Any]:
    """Evaluate the best finished child, apply the promotion rule, close the parent run.

    Args:
        config: The sweep's typed config (its store, registry rule and scratch root).
        parent: The sweep's MLflow parent run.

    Returns:
        A summary: the children's counts, the best child's run id, its metrics and the
        registry decision.
    """
    from mlflow.tracking import MlflowClient

    from fmnist_mlops.tracking import store

    store.connect(store.tracking_uri(config.mlflow.tracking_uri))
    client = MlflowClient()
    experiment_id = client.get_run(parent).info.experiment_id
    reg = config.registry
    best, finished, failed = _best_child(client, experiment_id, parent, reg.metric, reg.mode)
    summary: dict[str, Any] = {
        "parent_run_id": parent,
        "children_finished": len(finished),
        "children_failed": len(failed),
    }
    client.log_metric(parent, "children_finished", len(finished))
    client.log_metric(parent, "children_failed", len(failed))
    if best is None:
        client.set_tag(parent, "failure", "no child run finished")
        client.set_terminated(parent, "FAILED")
        log.error("sweep: no job finished; nothing evaluated or registered")
        return {**summary, "best_run_id": None}

    log.info(
        "sweep: best of %d finished jobs is run %s (%s), %s %.4f",
        len(finished),
        best.info.run_id,
        best.data.tags.get("sweep.overrides", ""),
        CHILD_METRIC[reg.metric],
        best.data.metrics[CHILD_METRIC[reg.metric]],
    )
    from fmnist_mlops.registry.stages import promote_child  # TensorFlow: only at the end of a sweep

    try:
        promoted = promote_child(client, parent, best, config)
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    client.set_terminated(parent, "FINISHED")
    return {**summary, **promoted}


def sweep_key(sweep_args: list[str]) -> str:
    """What makes two sweeps the same: their arguments (the same command, in any order)."""
    return hashlib.sha256(json.dumps(sorted(sweep_args)).encode()).hexdigest()[:16]


def _continue(client: Any, experiment_id: str, key: str) -> str | None:
    """The parent run of this sweep's interrupted run, taken over by this process; or None.

    The latest sweep with the same arguments continues when it was interrupted (KILLED, or
    RUNNING with its process gone): its finished jobs are not trained again, its interrupted
    job resumes, and the winner is chosen among all its jobs. A finished or failed sweep is
    not continued (the same command then starts a new sweep); a live one is refused.
    """
    from fmnist_mlops.runtime import owner
    from fmnist_mlops.runtime.errors import ConfigError
    from fmnist_mlops.tracking import runs

    found = client.search_runs(
        [experiment_id],
        f"tags.stage = 'sweep' and tags.`sweep.key` = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return None
    run = found[0]
    status, parent = run.info.status, run.info.run_id
    if status == "RUNNING" and owner.is_alive(run.data.tags):
        raise ConfigError(
            f"this sweep is running already (parent run {parent}, "
            f"{owner.describe(run.data.tags)}): wait for it or stop it"
        )
    if status not in ("RUNNING", "KILLED"):
        return None
    runs.take_over(client, parent, run_tags("sweep"))
    children = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=10000
    )
    done = sum(r.info.status == "FINISHED" for r in children)
    log.info(
        "sweep: continuing the interrupted sweep %s (%d of its jobs finished, kept; an "
        "interrupted job resumes from its backup)",
        parent,
        done,
    )
    return parent


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]


def _or_exit(fn: Any, *args: Any) -> Any:
    """Hydra turns a callback's exception into a warning; a sweep's own errors must end it."""
    from fmnist_mlops.runtime.errors import ProjectError

    try:
        return fn(*args)
    except ProjectError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:
        print(f"sweep: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


class MlflowSweepCallback(Callback):
    """Hydra callback: one MLflow parent run per ``train -m`` sweep (no-op for single runs)."""

    def __init__(self, job_name: str = "train") -> None:
        self.job_name = job_name
        self.parent: str | None = None
        self.config: Config | None = None  # the sweep's typed config, from its first moment

    def _ours(self, config: DictConfig) -> bool:
        return OmegaConf.select(config, "hydra.job.name") == self.job_name

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        if self._ours(config):
            _or_exit(self._open_parent, config)

    def _open_parent(self, config: DictConfig) -> None:
        from mlflow.tracking import MlflowClient

        from fmnist_mlops.runtime.cli import setup_logging
        from fmnist_mlops.tracking.context import open_stage

        setup_logging()
        ctx = open_stage(_task_config(config))
        experiment_id = ctx.track()
        self.config = ctx.config
        sweep_args = list(OmegaConf.select(config, "hydra.overrides.task") or [])
        key = sweep_key(sweep_args)
        client = MlflowClient()
        self.parent = _continue(client, experiment_id, key)
        if self.parent is None:
            run = client.create_run(
                experiment_id,
                run_name=f"sweep {time.strftime('%Y-%m-%d %H:%M:%S')}",
                tags={
                    **run_tags("sweep"),
                    "sweep.arguments": " ".join(sweep_args),
                    "sweep.key": key,
                },
            )
            self.parent = run.info.run_id
        os.environ[nesting.PARENT_ENV] = self.parent
        # Ctrl-C, SIGTERM or a crash skip on_multirun_end; the parent must not stay RUNNING.
        atexit.register(self._abandon)
        log.info("sweep: MLflow parent run %s (%s)", self.parent, " ".join(sweep_args))

    def _abandon(self) -> None:
        """At exit before on_multirun_end: end the parent run KILLED, nothing registered."""
        if self.parent is None:
            return
        from mlflow.tracking import MlflowClient

        parent, self.parent = self.parent, None
        try:
            client = MlflowClient()
            client.set_tag(parent, "failure", "sweep interrupted before its last job finished")
            client.set_terminated(parent, "KILLED")
        except Exception as exc:  # the store may be what failed; say so, exit anyway
            print(f"sweep: could not end parent run {parent}: {exc}", file=sys.stderr)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        if not self._ours(config) or not os.environ.get(nesting.PARENT_ENV):
            return
        os.environ[nesting.JOB_ENV] = str(OmegaConf.select(config, "hydra.job.num"))
        os.environ[nesting.OVERRIDES_ENV] = " ".join(
            OmegaConf.select(config, "hydra.overrides.task")
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:  # noqa: D102
        if not self._ours(config) or self.parent is None:
            return
        parent, self.parent = self.parent, None
        atexit.unregister(self._abandon)
        for key in (nesting.PARENT_ENV, nesting.JOB_ENV, nesting.OVERRIDES_ENV):
            os.environ.pop(key, None)
        summary = _or_exit(finish, self.config, parent)
        print(json.dumps({"sweep": summary}, default=str))
        if summary["best_run_id"] is None:
            raise SystemExit(1)
