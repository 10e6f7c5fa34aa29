"""Stages made of other stages: evaluate then promote, and a sweep's or study's chosen child.

The one place where evaluation and the registry meet; the scripts, the sweep callback and the
tuner (which receives :func:`promote_child` from ``src/tune.py``) call these.
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf, open_dict

from fmnist_mlops.config.schema import Config
from fmnist_mlops.evaluate.evaluation import evaluate_in
from fmnist_mlops.registry.promotion import promote
from fmnist_mlops.runtime.errors import DataError
from fmnist_mlops.tracking.context import StageContext, open_stage
from fmnist_mlops.tracking.logged_params import CONFIG_ARTIFACT


def evaluate_and_promote(ctx: StageContext) -> dict[str, Any]:
    """The pipeline's ``evaluate`` stage: evaluate, then the promotion rule, in one process.

    One stage rather than two because each Python stage pays ~5 s to import TensorFlow, Keras
    and MLflow, a tenth of what training the default model costs (``make bench``). Both halves
    share one context: the config is validated, the split read and the store opened once. With
    ``run_id`` and no ``paths.out``, the promotion record goes beside the evaluation's reports.

    Returns:
        The test metrics, the reports' folder (``out_dir``) and the promotion record
        (``promotion``).
    """
    metrics, out = evaluate_in(ctx)
    return {**metrics, "out_dir": str(out), "promotion": promote(ctx, out)}


def child_config(run_id: str, caller: Config) -> DictConfig:
    """The config a child run was trained with (its logged ``config.yaml``), set to evaluate it.

    Training settings come from the run itself; where things are (``mlflow``, ``registry``,
    ``paths.scratch``) from the sweep or study that asks, whose values are not redacted.
    Nothing is read from the child's scratch folder, which may be long gone.
    """
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{CONFIG_ARTIFACT}")
    except mlflow.exceptions.MlflowException as exc:
        raise DataError(f"run {run_id} has no logged config.yaml ({exc}): train it again") from None
    cfg = OmegaConf.create(text)
    with open_dict(cfg):
        cfg.mlflow = caller.mlflow.model_dump()
        cfg.registry = caller.registry.model_dump()
        cfg.paths.scratch = caller.paths.scratch
        cfg.paths.out = None
        cfg.run_id = run_id
    return cfg


def promote_child(client: Any, parent: str, child: Any, caller: Config) -> dict[str, Any]:
    """Evaluate a sweep's or study's chosen child run and apply the promotion rule.

    Uses the child's own config and its logged model (read from MLflow), so the evaluation is
    the ``evaluate`` stage's and the decision the ``register`` stage's. Records the outcome on
    the parent run.

    Args:
        client: An MLflow client of the store.
        parent: The sweep's or study's run id.
        child: The chosen child run.
        caller: The sweep's or study's typed config: where things are (store, registry,
            scratch) comes from it.

    Returns:
        The child's run id and overrides, its test accuracy, and the registry decision.
    """
    metrics = evaluate_and_promote(open_stage(child_config(child.info.run_id, caller)))
    decision = metrics["promotion"]
    overrides = child.data.tags.get("sweep.overrides", "")
    for key, value in {
        "best_run_id": child.info.run_id,
        "best_overrides": overrides,
        "registry.decision": "promoted" if decision["promote"] else "kept",
        "registry.version": str(decision["candidate_version"]),
    }.items():
        client.set_tag(parent, key, value)
    for key in ("test_accuracy", "test_loss", "val_accuracy", "val_loss"):
        client.log_metric(parent, f"best_{key}", float(metrics[key]))
    client.log_text(parent, json.dumps(decision, indent=2), "sweep/promotion.json")
    return {
        "best_run_id": child.info.run_id,
        "best_overrides": overrides,
        "test_accuracy": metrics["test_accuracy"],
        "val_accuracy": metrics["val_accuracy"],
        "promoted": decision["promote"],
        "version": decision["candidate_version"],
    }
