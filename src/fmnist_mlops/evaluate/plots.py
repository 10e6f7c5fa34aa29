"""Figures of a scored model: confusion matrix, misclassified images, filters, feature maps.

The training history's figure lives with the history (:mod:`fmnist_mlops.train.history`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fmnist_mlops.runtime.files import save_figure


def confusion_plot(cm: np.ndarray, class_names: Sequence[str], path: Path) -> Path:
    """Plot a confusion matrix with counts (rows: true class, columns: predicted)."""
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
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
    return save_figure(fig, path)


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
    fig = Figure(figsize=(cols * 2.2, rows * 2.5), layout="constrained")
    axes = fig.subplots(rows, cols)
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
    return save_figure(fig, path)


def filters_plot(kernel: np.ndarray, path: Path) -> Path:
    """Show each first-layer filter (kernel ``(h, w, 1, n)``) as a small grey image."""
    n = kernel.shape[-1]
    cols = 8
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(cols * 1.1, rows * 1.2), layout="constrained")
    axes = fig.subplots(rows, cols)
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for i, ax in zip(range(n), np.atleast_1d(axes).ravel(), strict=False):
        ax.imshow(kernel[:, :, 0, i], cmap="gray")
        ax.set_title(str(i), fontsize=7)
    fig.suptitle(f"First-layer filters ({kernel.shape[0]}x{kernel.shape[1]}, {n} of them)")
    return save_figure(fig, path)


def feature_maps_plot(
    image: np.ndarray, title: str, blocks: Sequence[tuple[str, np.ndarray]], path: Path, per_block=8
) -> Path:
    """The input image, then the first ``per_block`` feature maps of each conv block."""
    rows = 1 + len(blocks)
    fig = Figure(figsize=(per_block * 1.2, rows * 1.35), layout="constrained")
    axes = fig.subplots(rows, per_block)
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0, 0].set_title("input", fontsize=7)
    for row, (name, maps) in enumerate(blocks, start=1):
        for ch in range(min(per_block, maps.shape[-1])):
            axes[row, ch].imshow(maps[:, :, ch], cmap="viridis")
            axes[row, ch].set_title(f"{name}[{ch}] {maps.shape[0]}x{maps.shape[1]}", fontsize=6)
    fig.suptitle(title)
    return save_figure(fig, path)
