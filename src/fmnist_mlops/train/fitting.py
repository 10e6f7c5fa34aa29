"""The training loop: seed, build or restore the model, fit it, publish the best checkpoint.

Core, not orchestration: no MLflow, no claims, no run records. The ``train`` stage
(:mod:`training`) wraps it in a tracked, resumable run; the benchmark calls it bare.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fmnist_mlops.config.schema import ModelCfg, TrainCfg
from fmnist_mlops.data import augment, feed
from fmnist_mlops.data.splits import Splits
from fmnist_mlops.model.cnn import (
    build_model,
    compile_model,
    steps_per_execution,
    with_shift_tta,
)
from fmnist_mlops.runtime.errors import raise_if_interrupted
from fmnist_mlops.runtime.paths import MODEL_FILE
from fmnist_mlops.train import averaging, platforms
from fmnist_mlops.train import callbacks as callbacks_lib
from fmnist_mlops.train.backup import EpochBackupSpec, ResumeState
from fmnist_mlops.train.distribute import make_strategy, peers_guarded
from fmnist_mlops.train.history import ELAPSED, EPOCH_METRICS


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def keras_verbosity(verbose: str | int) -> int:
    """``auto``: Keras progress bars on a terminal, one line per epoch in logs (DVC, CI)."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


def weights_sha256(model: keras.Model) -> str:
    """SHA-256 over the model's weights, in order: equal on every worker of one training."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def _weights_equal(a: keras.Model, b: keras.Model) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))


def fit(
    train_cfg: TrainCfg,
    model_cfg: ModelCfg,
    seed: int,
    splits: Splits,
    out: Path,
    backup: EpochBackupSpec | None = None,
    restored: ResumeState | None = None,
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[keras.Model, dict[str, list[float]], int]:
    """Build, compile and fit the model; publish the best checkpoint as ``models/model.keras``.

    The best-only checkpoint is written beside ``models/model.keras`` under a temporary name
    and published (an atomic rename) only once the restored weights are verified to be its
    weights, so DVC and readers never see a half-written or a not-yet-best model.

    Args:
        train_cfg: The ``train`` config group (typed).
        model_cfg: The ``model`` config group (typed).
        seed: Seeds Python, NumPy, TensorFlow, the batch order and the augmentation.
        splits: Prepared data.
        out: Folder for ``models/model.keras``.
        backup: Where to back up each finished epoch (None: no backups).
        restored: A backup to continue from, instead of starting at epoch 0.
        extra_callbacks: More Keras callbacks, run after the project's own (the tracked
            training's MLflow logger, the tuner's pruning). ``fit`` itself logs nothing.

    Returns:
        The model (best weights), the per-epoch history and the best epoch (0-based).
    """
    # Before seeding: splitting the CPU into logical devices must precede TF's start-up.
    strategy = make_strategy(train_cfg.distribute, train_cfg.cpu_replicas)
    seed_everything(seed)
    published = out / MODEL_FILE
    published.parent.mkdir(parents=True, exist_ok=True)
    staging = published.with_name(f".{published.stem}.best{published.suffix}")
    steps = feed.batches_per_epoch(len(splits.x_train), train_cfg.batch_size)
    model = _compiled_model(train_cfg, model_cfg, strategy, steps, restored)
    past, best_weights = _resume_from(restored, staging)
    chain = callbacks_lib.project_chain(
        train_cfg, staging, restored, best_weights, backup, past, extra_callbacks
    )
    try:
        with peers_guarded():
            history = _run_epochs(model, train_cfg, seed, splits, steps, chain.callbacks, restored)
        raise_if_interrupted()
        if restored is not None and restored.stopped:
            model.set_weights(best_weights)
        best = keras.saving.load_model(str(staging), safe_mode=True, compile=False)
        if not _weights_equal(model, best):
            raise RuntimeError(
                f"best-epoch integrity check failed: in-memory weights differ from {staging}"
            )
        if model_cfg.tta_shift:
            # What predicts at test time is what is published, evaluated and served.
            with_shift_tta(best, model_cfg.tta_shift).save(staging)
        os.replace(staging, published)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    hist = {
        k: [float(v) for v in past.get(k, [])] + [float(v) for v in history.history.get(k, [])]
        for k in (*EPOCH_METRICS, ELAPSED)
    }
    return model, hist, int(chain.early.best_epoch)


def _compiled_model(
    train_cfg: TrainCfg, model_cfg: ModelCfg, strategy, steps: int, restored
) -> keras.Model:
    # Keras' multi-step loop fails under tf.distribute strategies (an unfed placeholder in
    # its while loop, Keras 3.15): one step per call there.
    per_call = steps_per_execution(steps) if train_cfg.distribute == "none" else 1
    precision = platforms.resolve_precision(train_cfg.precision)
    with strategy.scope():
        if restored is None:
            model = build_model(model_cfg, precision)
            compile_model(model, train_cfg, per_call, total_steps=steps * train_cfg.epochs)
        else:
            # Same config hash, same splits: the saved compile settings still divide the epoch.
            model = restored.model()
            if train_cfg.ema is not None:
                averaging.unswap(model)
    return model


def _resume_from(restored, staging: Path) -> tuple[dict[str, list[float]], list | None]:
    """The history so far and the best weights of a resumed run (the checkpoint restored)."""
    if restored is None:
        return {}, None
    shutil.copyfile(restored.best_model_file(), staging)
    best = keras.saving.load_model(str(staging), safe_mode=True, compile=False)
    return restored.history, best.get_weights()


def _run_epochs(model, train_cfg: TrainCfg, seed: int, splits: Splits, steps, callbacks, restored):
    initial_epoch = 0 if restored is None else restored.epoch + 1
    epochs = train_cfg.epochs
    if restored is not None and restored.stopped:
        epochs = initial_epoch  # early stopping had already ended it; only finish up
    train_batches = feed.training_batches(
        splits.x_train,
        splits.y_train,
        train_cfg.batch_size,
        seed,
        augment.batch_transform(train_cfg.augment),
        start_epoch=initial_epoch,
    )
    return model.fit(
        train_batches,
        steps_per_epoch=steps,
        shuffle=False,  # the dataset reshuffles itself every epoch
        validation_data=feed.inference_batches(splits.x_val, y=splits.y_val),
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=callbacks,
        verbose=keras_verbosity(train_cfg.verbose),
    )
