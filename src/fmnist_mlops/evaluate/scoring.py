"""Model + split -> predictions and metrics: the one pure function everything scores with."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import mlflow
import numpy as np

from fmnist_mlops.config.schema import CLASS_NAMES
from fmnist_mlops.data import feed
from fmnist_mlops.tracking.store import load_logged_model


def load_network(model_uri: str) -> keras.Model:
    """Load the Keras network inside a logged model (our pyfunc, or a plain TF-flavor model)."""
    pyfunc = load_logged_model(model_uri)
    try:
        return pyfunc.unwrap_python_model().model
    except (mlflow.exceptions.MlflowException, AttributeError):
        from mlflow import tensorflow as mlflow_tensorflow

        return load_logged_model(model_uri, mlflow_tensorflow)


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
