"""Figures a person looks at: training history, confusion matrix, misclassified images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures only go to files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def history_plot(history: dict[str, Sequence[float]], path: Path, best_epoch: int | None) -> Path:
    """Plot loss and accuracy, train vs val, per epoch; mark the restored best epoch."""
    epochs = np.arange(len(history["loss"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_plot(cm: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Plot a confusion matrix with counts (rows: true class, columns: predicted)."""
    fig, ax = plt.subplots(figsize=(8, 7), constrained_layout=True)
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > threshold else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test set)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def misclassified_grid(
    images: np.ndarray,
    true: np.ndarray,
    pred: np.ndarray,
    prob: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    max_images: int = 25,
) -> Path:
    """Show the most confidently wrong test images with their true and predicted class."""
    wrong = np.flatnonzero(true != pred)
    wrong = wrong[np.argsort(-prob[wrong])][:max_images]
    cols = 5
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.5), constrained_layout=True)
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, idx in zip(np.atleast_1d(axes).ravel(), wrong, strict=False):
        ax.imshow(images[idx], cmap="gray", vmin=0, vmax=255)
        ax.set_title(
            f"#{idx} true: {class_names[true[idx]]}\npred: {class_names[pred[idx]]} "
            f"({prob[idx]:.2f})",
            fontsize=7,
        )
    fig.suptitle(f"Most confident mistakes ({len(wrong)} shown)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
