"""The ``evaluate`` stage: score the trained model on the held-out test set, in the same run."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import keras
import mlflow

from fmnist_mlops.config.schema import CLASS_NAMES
from fmnist_mlops.data.splits import Splits
from fmnist_mlops.evaluate.plots import confusion_plot, misclassified_grid
from fmnist_mlops.evaluate.scoring import Assessment, assess, load_network
from fmnist_mlops.runtime.files import atomic, write_json
from fmnist_mlops.runtime.folders import read_run, stage_dir
from fmnist_mlops.runtime.paths import (
    CONFUSION_PNG,
    METRICS_JSON,
    MISCLASSIFIED_PNG,
    MODEL_FILE,
    PER_CLASS_JSON,
    PREDICTIONS_CSV,
    RUN_FILE,
)
from fmnist_mlops.tracking.context import StageContext
from fmnist_mlops.tracking.scratch import out_dir

log = logging.getLogger(__name__)


def logged_model_id(model_uri: str) -> str | None:
    """The MLflow 3 LoggedModel id in ``models:/m-...`` (None for other URIs)."""
    return model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None


def _write_reports(out: Path, splits: Splits, test: Assessment) -> None:
    """Per-class scores, per-image predictions, confusion matrix, misclassified grid."""
    write_json(out / PER_CLASS_JSON, test.classes)
    with atomic(out / PREDICTIONS_CSV) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "actual", "predicted", "probability"])
        for i, (t, p, q) in enumerate(zip(splits.y_test, test.pred, test.top, strict=True)):
            writer.writerow([i, CLASS_NAMES[t], CLASS_NAMES[p], f"{q:.6f}"])
    confusion_plot(test.confusion, CLASS_NAMES, out / CONFUSION_PNG)
    misclassified_grid(
        splits.x_test, splits.y_test, test.pred, test.top, CLASS_NAMES, out / MISCLASSIFIED_PNG
    )


def evaluate_in(ctx: StageContext) -> tuple[dict[str, Any], Path]:
    """Score the trained model on the val and test splits and log it to the train run.

    The model is ``models/model.keras`` in ``paths.out`` or, with ``run_id``, the run's logged
    model in MLflow (then the reports go to ``paths.out`` or a new scratch folder).
    Writes ``reports/metrics.json`` (DVC metrics, with the MLflow ``run_id``), per-class
    scores, per-image test predictions, the confusion matrix and a misclassified grid.

    Args:
        ctx: The stage's context (:func:`~fmnist_mlops.tracking.context.open_stage`).

    Returns:
        The metrics written to ``reports/metrics.json``, and the folder holding the reports.
    """
    paths, run_id = ctx.config.paths, ctx.config.run_id
    if not run_id:  # what train wrote, read before any heavy work
        out = stage_dir(paths.out, "evaluate")
        run_info = read_run(out)
    splits = ctx.splits
    ctx.track()
    if run_id:  # nothing from a scratch folder: the run, its model and scores in MLflow
        run_info = ctx.named_run()
        model = load_network(run_info["model_uri"])
        out = out_dir(paths.out, "evaluate", paths.scratch)
        write_json(out / RUN_FILE, run_info)
    else:
        model = keras.saving.load_model(str(out / MODEL_FILE), safe_mode=True, compile=False)

    val = assess(model, splits.x_val, splits.y_val)
    test = assess(model, splits.x_test, splits.y_test)
    metrics = {
        "run_id": run_info["run_id"],
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "val_loss": val.loss,
        "val_accuracy": val.accuracy,
        "best_epoch": run_info["best_epoch"],
        "epochs_trained": run_info["epochs_trained"],
        "test_images": int(len(splits.y_test)),
    }
    _write_reports(out, splits, test)
    classes = test.classes
    # Added to the finished train run by id, never by reopening it: a RUNNING run whose owner
    # (the training process) is gone would be marked KILLED by a training starting meanwhile.
    run_id = run_info["run_id"]
    mlflow.log_metrics(
        {
            "test_loss": test.loss,
            "test_accuracy": test.accuracy,
            "eval_val_loss": val.loss,
            "eval_val_accuracy": val.accuracy,
            **{f"test_f1.{name}": c["f1"] for name, c in classes.items()},
            **{f"test_precision.{name}": c["precision"] for name, c in classes.items()},
            **{f"test_recall.{name}": c["recall"] for name, c in classes.items()},
        },
        # Also on the logged model, so its MLflow 3 page and search see the test scores.
        model_id=logged_model_id(run_info["model_uri"]),
        run_id=run_id,
    )
    for path in (PER_CLASS_JSON, PREDICTIONS_CSV, CONFUSION_PNG, MISCLASSIFIED_PNG):
        mlflow.log_artifact(str(out / path), "evaluation", run_id=run_id)
    mlflow.log_dict(metrics, "evaluation/metrics.json", run_id=run_id)
    # Written last: DVC treats this file as the stage's result.
    write_json(out / METRICS_JSON, metrics)
    log.info(
        "evaluate: run %s test_accuracy %.4f test_loss %.4f val_accuracy %.4f",
        metrics["run_id"],
        metrics["test_accuracy"],
        metrics["test_loss"],
        metrics["val_accuracy"],
    )
    return metrics, out
