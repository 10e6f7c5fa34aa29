"""The per-epoch history of a training: its metric names, its CSV file and its figure.

What ``fit`` reports each epoch (``EPOCH_METRICS``) is what is logged to MLflow each epoch
(:class:`~fmnist_mlops.train.callbacks.MlflowEpochLogger`), written to ``history.csv`` and
drawn in ``history.png``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fmnist_mlops.runtime.files import atomic, save_figure

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
# Training wall-clock seconds from the start of fit to the end of each epoch, summed over
# resumed segments (``callbacks.FitClock``): logged each epoch, kept in the history.
ELAPSED = "fit_elapsed_s"
# Validation accuracies whose time-to-reach every run logs (``time_to_val_accuracy_<t>``).
THRESHOLDS = (0.90, 0.92, 0.94, 0.95)


def logged_metrics(logs: Mapping[str, float]) -> dict[str, float]:
    """What MLflow gets for one epoch (step = epoch): ``EPOCH_METRICS`` and ``lr``.

    ``lr`` is the rate the epoch used (Keras reports it as ``learning_rate`` when a schedule or
    plateau callback changes it); a name Keras does not report is left out.
    """
    values = {k: float(logs[k]) for k in (*EPOCH_METRICS, ELAPSED) if k in logs}
    if "learning_rate" in logs:
        values["lr"] = float(logs["learning_rate"])
    return values


def write_history(hist: dict[str, list[float]], path: Path) -> None:
    """Write one CSV row per epoch: the epoch and each of ``EPOCH_METRICS``."""
    with atomic(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", *EPOCH_METRICS])
        for epoch in range(len(hist["loss"])):
            writer.writerow([epoch, *(f"{hist[k][epoch]:.6f}" for k in EPOCH_METRICS)])


def history_plot(history: dict[str, Sequence[float]], path: Path, best_epoch: int | None) -> Path:
    """Plot loss and accuracy, train vs val, per epoch; mark the restored best epoch."""
    epochs = np.arange(len(history["loss"]))
    # Here: reading the names above (make reproduce, the report) needs no matplotlib.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, history[metric], marker="o", label=f"train {metric}")
        ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"val {metric}")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training history")
    return save_figure(fig, path)


def time_to_accuracy(history: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Seconds of training until validation accuracy first reached each of :data:`THRESHOLDS`.

    Read from the per-epoch ``val_accuracy`` and :data:`ELAPSED`; a threshold never reached,
    or a history without elapsed times (a backup from before they were kept), is left out.
    """
    accuracy, elapsed = history.get("val_accuracy", []), history.get(ELAPSED, [])
    if len(elapsed) != len(accuracy):
        return {}
    reached = {}
    for threshold in THRESHOLDS:
        epoch = next((i for i, a in enumerate(accuracy) if a >= threshold), None)
        if epoch is not None:
            reached[f"time_to_val_accuracy_{threshold:.2f}"] = float(elapsed[epoch])
    return reached
