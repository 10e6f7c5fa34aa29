"""The Keras callbacks of a training: stop on signals and NaN, log epochs, back up, restore.

Order matters, and :func:`project_chain` is the one place that builds it: the checkpoint,
early stopping and the LR plateau update their state first; :class:`EpochBackup` then saves
that state; :class:`MlflowEpochLogger` logs last, so an epoch is either in the backup or
re-run, and epochs in the backup but missing from MLflow are logged on resume.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow

from fmnist_mlops.config.schema import TrainCfg
from fmnist_mlops.runtime.errors import TrainingDiverged, raise_if_interrupted
from fmnist_mlops.train.averaging import EmaWeights
from fmnist_mlops.train.backup import as_number, read_files, rng_state, write_state
from fmnist_mlops.train.history import ELAPSED, logged_metrics


class MlflowEpochLogger(keras.callbacks.Callback):
    """Log ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` once per epoch (step = epoch).

    The tracked training passes it in (``fit`` itself knows nothing of MLflow). At the start it
    tags the run with the replicas the model trains on and the precision it computes in.
    """

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: D102
        policies = {layer.dtype_policy.name for layer in self.model.layers}
        mlflow.set_tags(
            {
                "distribute.replicas": str(self.model.distribute_strategy.num_replicas_in_sync),
                "precision.resolved": "mixed_bfloat16"
                if "mixed_bfloat16" in policies
                else "float32",
            }
        )

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:  # noqa: D102
        mlflow.log_metrics(logged_metrics(logs or {}), step=epoch, synchronous=True)


class FitClock(keras.callbacks.Callback):
    """Put the training's wall-clock seconds so far into each epoch's logs (``ELAPSED``).

    Counted from the start of ``fit`` and continued from a resumed run's last epoch, so the
    time to an accuracy is the training time it took, whatever was interrupted in between.
    First in the chain: the backup and the MLflow logger see it.
    """

    def __init__(self, history: dict[str, list[float]]) -> None:
        super().__init__()
        done = history.get(ELAPSED) or [0.0]
        self.offset, self.started = float(done[-1]), 0.0

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: D102
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # noqa: D102
        if logs is not None:
            logs[ELAPSED] = self.offset + time.perf_counter() - self.started


class StopOnSignal(keras.callbacks.Callback):
    """Re-raise a SIGTERM/SIGINT at the next batch if its handler's own raise got lost."""

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:  # noqa: D102
        raise_if_interrupted()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # noqa: D102
        raise_if_interrupted()


class FailOnNaN(keras.callbacks.Callback):
    """Stop at the first NaN/inf batch loss with an error, instead of training on garbage."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:  # noqa: D102
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:  # noqa: D102
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"loss became {float(loss)} at epoch {self.epoch} batch {batch}: "
                f"train.lr={self.lr} is too high for this model (default: conf/train/default.yaml)"
            )


class EpochBackup(keras.callbacks.Callback):
    """After each epoch: save model + optimizer, best model, callback states, history.

    Must come after the checkpoint, early-stopping and LR callbacks in the callback list so it
    sees their updated state, and before the MLflow logger: an epoch is either in the backup
    or re-run, and epochs in the backup but missing from MLflow are logged on resume.
    """

    def __init__(
        self,
        folder: Path,
        run_id: str,
        config_hash: str,
        checkpoint_file: Path,
        early: keras.callbacks.EarlyStopping,
        checkpoint: keras.callbacks.ModelCheckpoint,
        plateau: keras.callbacks.ReduceLROnPlateau | None,
        history: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.folder, self.run_id, self.hash = folder, run_id, config_hash
        self.checkpoint_file = checkpoint_file
        self.early, self.checkpoint, self.plateau = early, checkpoint, plateau
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # noqa: D102
        logs = logs or {}
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = read_files(self.folder)
        last = f"last-{epoch:04d}.keras"
        self.model.save(self.folder / last)
        best = previous.get("best")
        if self.checkpoint_file.exists() and (self.early.best_epoch == epoch or best is None):
            best = f"best-{epoch:04d}.keras"
            shutil.copyfile(self.checkpoint_file, self.folder / best)
        state = {
            "run_id": self.run_id,
            "hash": self.hash,
            "epoch": epoch,
            "stopped": bool(self.model.stop_training),
            "history": self.history,
            "early": {
                "wait": self.early.wait,
                "best": as_number(self.early.best),
                "best_epoch": self.early.best_epoch,
            },
            "checkpoint_best": as_number(self.checkpoint.best),
            "plateau": None
            if self.plateau is None
            else {
                "wait": self.plateau.wait,
                "best": as_number(self.plateau.best),
                "cooldown_counter": self.plateau.cooldown_counter,
            },
            "files": {"last": last, "best": best},
            "rng": rng_state(self.model),
        }
        write_state(self.folder, state)


class RestoredEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters and best weights survive a restart."""

    def __init__(
        self, *args: Any, restored: dict[str, Any] | None = None, best_weights=None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._restored, self._restored_weights = restored, best_weights

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: D102
        super().on_train_begin(logs)
        if self._restored:
            self.wait = int(self._restored["wait"])
            self.best = self._restored["best"]
            self.best_epoch = int(self._restored["best_epoch"])
            self.best_weights = self._restored_weights


class RestoredReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a restart (the rate is in the optimizer)."""

    def __init__(self, *args: Any, restored: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._restored = restored

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: D102
        super().on_train_begin(logs)
        if self._restored:
            self.wait = int(self._restored["wait"])
            self.best = self._restored["best"]
            self.cooldown_counter = int(self._restored["cooldown_counter"])


@dataclass(frozen=True)
class Chain:
    """The callbacks of one training, in their required order, and the ones fit reads back."""

    callbacks: list[keras.callbacks.Callback]
    early: RestoredEarlyStopping


def project_chain(
    train_cfg: TrainCfg,
    checkpoint_file: Path,
    restored: Any,
    best_weights: list | None,
    backup: Any,
    history: dict[str, list[float]],
    extra: Sequence[keras.callbacks.Callback] = (),
) -> Chain:
    """Build the project's callbacks in the order the resume logic depends on.

    Signals and NaN first; then the EMA swap (``train.ema``); then the best-only checkpoint,
    early stopping and the LR plateau (their state changes at the end of an epoch); then
    :class:`EpochBackup`, which saves that state; then ``extra`` (the tracked training's
    :class:`MlflowEpochLogger` first).

    Args:
        train_cfg: The ``train`` config group.
        checkpoint_file: Where the best-only checkpoint is written.
        restored: A ``resume.ResumeState`` to continue from, or None.
        best_weights: The restored best weights (None when starting fresh).
        backup: A ``resume.EpochBackupSpec``, or None for no per-epoch backups.
        history: Epoch metrics so far (a resumed run's).
        extra: More callbacks, run last.
    """
    monitor = train_cfg.monitor
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(checkpoint_file),
        monitor=monitor,
        save_best_only=True,
        verbose=0,
        # A resumed run must not let a worse first epoch overwrite the best checkpoint.
        initial_value_threshold=restored.checkpoint_best if restored else None,
    )
    early = RestoredEarlyStopping(
        monitor=monitor,
        patience=train_cfg.patience,
        restore_best_weights=True,
        restored=restored.early if restored else None,
        best_weights=best_weights,
    )
    plateau = None
    if train_cfg.lr_plateau_factor and train_cfg.schedule == "plateau":
        # Cutting the step when the monitored metric stalls buys the last few tenths of a
        # percent that a constant Adam step leaves on the table before early stopping ends it.
        plateau = RestoredReduceLROnPlateau(
            monitor=monitor,
            factor=train_cfg.lr_plateau_factor,
            patience=train_cfg.lr_plateau_patience,
            verbose=0,
            restored=restored.plateau if restored else None,
        )
    state = [checkpoint, early, *([plateau] if plateau else [])]
    chain: list[keras.callbacks.Callback] = [
        FitClock(history),
        StopOnSignal(),
        FailOnNaN(train_cfg.lr),
    ]
    if train_cfg.ema is not None:
        chain.append(EmaWeights())  # before every callback that reads the weights
    chain += state
    if backup is not None:
        chain.append(
            EpochBackup(
                backup.folder,
                backup.run_id,
                backup.config_hash,
                checkpoint_file,
                early,
                checkpoint,
                plateau,
                history=history,
            )
        )
    return Chain([*chain, *extra], early)
