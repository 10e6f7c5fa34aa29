"""The ``evaluate`` stage: score the trained model on the held-out test set, in the same run."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from omegaconf import DictConfig

from fmnist_mlops import CLASS_NAMES, feed, tracking
from fmnist_mlops.config import validate
from fmnist_mlops.data import Splits, check_split, load_prepared
from fmnist_mlops.paths import (
    CONFUSION_PNG,
    METRICS_JSON,
    MISCLASSIFIED_PNG,
    MODEL_FILE,
    PER_CLASS_JSON,
    PREDICTIONS_CSV,
    RUN_FILE,
    atomic,
    read_run,
    resolve,
    stage_dir,
    write_json,
)
from fmnist_mlops.plots import confusion_plot, misclassified_grid
from fmnist_mlops.scratch import out_dir

log = logging.getLogger(__name__)


def load_network(model_uri: str) -> keras.Model:
    """Load the Keras network inside a logged model (our pyfunc, or a plain TF-flavor model)."""
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    try:
        return pyfunc.unwrap_python_model().model
    except (mlflow.exceptions.MlflowException, AttributeError):
        from mlflow import tensorflow as mlflow_tensorflow

        return mlflow_tensorflow.load_model(model_uri)


@dataclass(frozen=True)
class Assessment:
    """What a model does on one split: predictions and every metric the project reports."""

    loss: float
    accuracy: float
    probs: np.ndarray  # (n, 10) class probabilities
    pred: np.ndarray  # (n,) predicted class
    top: np.ndarray  # (n,) probability of the predicted class
    confusion: np.ndarray  # (10, 10): rows true class, columns predicted
    classes: dict[str, dict[str, float]]  # per class name: precision, recall, f1, support

    def metric(self, name: str) -> float:
        """``val_accuracy``/``accuracy`` or ``val_loss``/``loss`` (the promotion metric)."""
        return self.accuracy if name.endswith("accuracy") else self.loss


def assess(model: keras.Model, x: np.ndarray, y: np.ndarray) -> Assessment:
    """The one place predictions become metrics: evaluate, the promotion, sweeps, the report.

    Args:
        model: A Keras network taking raw 0-255 pixels.
        x: Images, (n, 28, 28).
        y: True classes, (n,).
    """
    from sklearn.metrics import confusion_matrix

    probs = model.predict(feed.inference_batches(x), verbose=0)
    pred = np.argmax(probs, axis=1)
    eps = 1e-7
    return Assessment(
        loss=float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)))),
        accuracy=float(np.mean(pred == y)),
        probs=probs,
        pred=pred,
        top=probs[np.arange(len(pred)), pred],
        confusion=confusion_matrix(y, pred, labels=list(range(len(CLASS_NAMES)))),
        classes=per_class(y, pred),
    )


def per_class(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class name."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(CLASS_NAMES))), zero_division=0
    )
    return {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(CLASS_NAMES)
    }


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


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score the trained model on the val and test splits and log it to the train run.

    See :func:`evaluate_into`, which also returns the folder the reports went to.

    Returns:
        The metrics written to ``reports/metrics.json``.
    """
    return evaluate_into(cfg)[0]


def evaluate_into(cfg: DictConfig) -> tuple[dict[str, Any], Path]:
    """Score the trained model on the val and test splits and log it to the train run.

    The model is ``models/model.keras`` in ``paths.out`` or, with ``run_id``, the run's logged
    model in MLflow (then the reports go to ``paths.out`` or a new scratch folder).
    Writes ``reports/metrics.json`` (DVC metrics, with the MLflow ``run_id``), per-class
    scores, per-image test predictions, the confusion matrix and a misclassified grid.

    Returns:
        The metrics written to ``reports/metrics.json``, and the folder holding the reports.
    """
    config = validate(cfg)
    paths, run_id = config.paths, config.run_id
    if not run_id:  # what train wrote, read before any heavy work
        out = stage_dir(paths.out, "evaluate")
        run_info = read_run(out)
    prepared = resolve(paths.prepared)
    splits = load_prepared(prepared)
    check_split(config.data, splits.meta, prepared)
    tracking.setup(cfg)
    if run_id:  # nothing from a scratch folder: the run, its model and scores in MLflow
        run_info = tracking.run_record(run_id, splits.meta)
        model = load_network(run_info["model_uri"])
        out = out_dir(paths.out, "evaluate", paths.scratch)
        write_json(out / RUN_FILE, run_info)
    else:
        model = keras.saving.load_model(str(out / MODEL_FILE), safe_mode=True, compile=False)

    with mlflow.start_run(run_id=run_info["run_id"]):
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
        )
        for path in (PER_CLASS_JSON, PREDICTIONS_CSV, CONFUSION_PNG, MISCLASSIFIED_PNG):
            mlflow.log_artifact(str(out / path), "evaluation")
        mlflow.log_dict(metrics, "evaluation/metrics.json")
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
