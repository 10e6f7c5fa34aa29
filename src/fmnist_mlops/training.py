"""The ``train`` stage: fit the CNN with a best-only checkpoint and early stopping, tracked."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig

from fmnist_mlops import CLASS_NAMES, augment, feed, nesting, platforms, resume, tracking
from fmnist_mlops import callbacks as callbacks_lib
from fmnist_mlops.callbacks import EPOCH_METRICS
from fmnist_mlops.config import validate
from fmnist_mlops.data import Splits, stage_split
from fmnist_mlops.distribute import make_strategy
from fmnist_mlops.errors import Interrupted, TrainingDiverged, raise_if_interrupted
from fmnist_mlops.folders import writable_dir
from fmnist_mlops.model import build_model, compile_model, steps_per_execution
from fmnist_mlops.paths import (
    HISTORY_CSV,
    HISTORY_PNG,
    MODEL_FILE,
    RUN_FILE,
    atomic,
    resolve,
    write_json,
)
from fmnist_mlops.plots import history_plot
from fmnist_mlops.schema import Config, ModelCfg, TrainCfg
from fmnist_mlops.scratch import out_dir, scratch_root

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TF ops deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def pip_requirements() -> list[str]:
    """Pinned requirements for logged models (inference by MLflow costs ~6 s and is wrong)."""
    return platforms.model_requirements(
        {
            "mlflow": mlflow.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
        }
    )


def keras_verbosity(verbose: str | int) -> int:
    """``auto``: Keras progress bars on a terminal, one line per epoch in logs (DVC, CI)."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


def _weights_equal(a: keras.Model, b: keras.Model) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))


def fit(
    train_cfg: TrainCfg,
    model_cfg: ModelCfg,
    seed: int,
    splits: Splits,
    out: Path,
    backup: resume.EpochBackupSpec | None = None,
    restored: resume.ResumeState | None = None,
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
        history = _run_epochs(model, train_cfg, seed, splits, steps, chain.callbacks, restored)
        raise_if_interrupted()
        if restored is not None and restored.stopped:
            model.set_weights(best_weights)
        best = keras.saving.load_model(str(staging), safe_mode=True, compile=False)
        if not _weights_equal(model, best):
            raise RuntimeError(
                f"best-epoch integrity check failed: in-memory weights differ from {staging}"
            )
        os.replace(staging, published)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    hist = {
        k: [float(v) for v in past.get(k, [])] + [float(v) for v in history.history.get(k, [])]
        for k in EPOCH_METRICS
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
            model = compile_model(build_model(model_cfg, precision), train_cfg, per_call)
        else:
            # Same config hash, same splits: the saved compile settings still divide the epoch.
            model = restored.model()
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


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def log_served_model(
    keras_file: Path, example: np.ndarray, best_epoch: int
) -> mlflow.models.model.ModelInfo:
    """Log the network as the models-from-code pyfunc in ``pyfunc_model.py`` (name ``model``).

    Linked to the run's metrics of ``best_epoch`` (the restored weights), so MLflow 3's model
    page and ``search_logged_models`` show that epoch's numbers, not the first epoch's.

    The signature declares the ``top_k`` param and no input schema on purpose: MLflow's tensor
    schema enforcement refuses any dtype but the declared one before the model's code runs
    (uint8 pixels, as read from image files, were refused for a float32 spec), so the model
    validates its input itself (``pyfunc_model.validate_pixels``; the contract is in the README).
    A real uint8 input example, explicit pip requirements (inference costs seconds and lists
    the wrong TensorFlow), and the class names as an artifact inside the model.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec

    signature = ModelSignature(params=ParamSchema([ParamSpec("top_k", "long", 0)]))
    # The model's environment is its requirements.txt; MLflow would otherwise copy this
    # project's uv.lock and pyproject.toml (dev tools, the project itself) into every model.
    with _env("MLFLOW_LOG_UV_FILES", "false"), tempfile.TemporaryDirectory() as tmp:
        names = Path(tmp) / "class_names.json"
        names.write_text(json.dumps(list(CLASS_NAMES)))
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"keras_model": str(keras_file), "class_names": str(names)},
            signature=signature,
            input_example=(example, {"top_k": 3}),
            pip_requirements=pip_requirements(),
            metadata={"class_names": list(CLASS_NAMES)},
            step=best_epoch,
        )


def _write_history(hist: dict[str, list[float]], path: Path) -> None:
    with atomic(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", *EPOCH_METRICS])
        for epoch in range(len(hist["loss"])):
            writer.writerow([epoch, *(f"{hist[k][epoch]:.6f}" for k in EPOCH_METRICS)])


def train(
    cfg: DictConfig,
    tags: dict[str, str] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Train one model and track it in MLflow (the ``train`` stage and ad-hoc runs).

    Writes ``models/model.keras`` (best checkpoint), ``models/run.json`` (MLflow run id),
    ``reports/history.{csv,png}`` under ``paths.out`` (a scratch folder when it is null).

    Args:
        cfg: The composed config.
        tags: Extra tags for the new MLflow run (the tuner nests its trials with them).
        callbacks: Extra Keras callbacks for ``fit`` (the tuner's pruning callback).

    Returns:
        ``run_id``, ``best_epoch``, ``epochs_trained`` and the best epoch's ``val_loss`` /
        ``val_accuracy``, plus ``out_dir``.
    """
    config = validate(cfg)
    paths = config.paths
    prepared, splits = stage_split(config)
    # An output folder that cannot work is refused before any run exists.
    if paths.out is None:
        writable_dir("paths.scratch", scratch_root(paths.scratch))
    else:
        writable_dir("paths.out", resolve(paths.out))
    experiment_id = tracking.setup(cfg)
    tracking.mark_orphaned_runs(experiment_id)

    cfg_hash = resume.config_hash(cfg, splits.meta)
    folder, restored = resume.claim(
        resume.backups_root(tracking.tracking_uri(cfg)),
        cfg_hash,
        None if paths.out is None else str(resolve(paths.out)),
        paths.out,
        tracking.run_exists,
    )
    try:
        return _claimed_training(
            cfg, config, splits, prepared, folder, restored, cfg_hash, tags, callbacks
        )
    except BaseException:
        resume.release(folder)
        raise


def _claimed_training(cfg, config, splits, prepared, folder, restored, cfg_hash, tags, callbacks):
    """The MLflow run of :func:`train` (new or resumed) around the fit, in a claimed backup."""
    out = out_dir(config.paths.out, "train", config.paths.scratch)
    if restored is None:
        run_tags = {
            **tracking.run_tags("train"),
            **nesting.child_tags(),
            **(tags or {}),
            "out_dir": str(out),
        }
        active = mlflow.start_run(tags=run_tags)
        resume.name_run(folder, active.info.run_id)
    else:
        log.info(
            "train: resuming run %s after epoch %d (backup %s)",
            restored.run_id,
            restored.epoch,
            folder,
        )
        active = mlflow.start_run(run_id=restored.run_id)
        mlflow.set_tags(
            {
                **tracking.run_tags("train"),
                "resumed_after_epoch": str(restored.epoch),
                "out_dir": str(out),
            }
        )

    with active as run:
        spec = resume.EpochBackupSpec(folder, run.info.run_id, cfg_hash)
        try:
            record, summary, fit_seconds = _tracked_training(
                cfg, config, splits, prepared, out, run, spec, restored, callbacks
            )
        except Interrupted:
            mlflow.end_run(status="KILLED")
            log.warning(
                "train: run %s marked KILLED; the same command resumes it from %s",
                run.info.run_id,
                folder,
            )
            raise
        except TrainingDiverged as exc:
            resume.clear(folder)  # resuming would diverge again
            mlflow.set_tag("failure", str(exc))
            mlflow.end_run(status="FAILED")
            raise TrainingDiverged(f"{exc}; run {run.info.run_id} marked FAILED") from None
    resume.clear(folder)
    log.info(
        "train: done in %.1f s, best epoch %d of %d, val_accuracy %.4f",
        fit_seconds,
        summary["best_epoch"],
        summary["epochs_trained"],
        summary["val_accuracy"],
    )
    return {**record, "out_dir": str(out)}


def _log_missing_epochs(run_id: str, history: dict[str, list[float]]) -> None:
    """Log epochs that made it into a backup but not into MLflow before an interruption."""
    client = mlflow.tracking.MlflowClient()
    logged = {m.step for m in client.get_metric_history(run_id, "val_loss")}
    for epoch in range(len(history.get("loss", []))):
        if epoch not in logged:
            values = {
                k: history[k][epoch] for k in (*EPOCH_METRICS, "learning_rate") if k in history
            }
            if "learning_rate" in values:
                values["lr"] = values.pop("learning_rate")
            mlflow.log_metrics(values, step=epoch, synchronous=True)


def _tracked_training(cfg, config, splits, prepared, out, run, spec, restored, callbacks=()):
    """Everything ``train`` logs inside its MLflow run; returns (record, summary, fit seconds).

    ``cfg`` (the composed DictConfig) is what gets logged as params; ``config`` is its typed
    form, which the training itself reads.
    """
    run_id = run.info.run_id
    log.info("train: MLflow run %s, outputs in %s", run_id, out)
    if restored is not None:
        _log_missing_epochs(run_id, restored.history)
        return _fit_and_log(config, splits, out, run_id, spec, restored, callbacks)
    tracking.log_config(cfg)
    mlflow.set_tags({f"data.sha256.{k}": v for k, v in splits.meta["sha256"].items()})
    mlflow.set_tag("data.source", splits.meta["source"])
    for name, x, y in (
        ("train", splits.x_train, splits.y_train),
        ("val", splits.x_val, splits.y_val),
    ):
        with warnings.catch_warnings():
            # MLflow registers two equivalent local-path source types and warns about it.
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(
                features=x, targets=y, name=f"fashion-mnist-{name}", source=str(prepared)
            )
        mlflow.log_input(dataset, context="training" if name == "train" else "validation")

    return _fit_and_log(config, splits, out, run_id, spec, None, callbacks)


def _fit_and_log(config: Config, splits, out, run_id, spec, restored, callbacks=()):
    started = time.perf_counter()
    _, hist, best_epoch = fit(
        config.train,
        config.model,
        config.seed,
        splits,
        out,
        backup=spec,
        restored=restored,
        extra_callbacks=[callbacks_lib.MlflowEpochLogger(), *callbacks],
    )
    fit_seconds = time.perf_counter() - started

    summary = {
        "best_epoch": best_epoch,
        "epochs_trained": len(hist["loss"]),
        "val_loss": hist["val_loss"][best_epoch],
        "val_accuracy": hist["val_accuracy"][best_epoch],
        "fit_seconds": round(fit_seconds, 2),
    }
    mlflow.log_metrics(
        {
            "best_epoch": best_epoch,
            "epochs_trained": summary["epochs_trained"],
            "best_val_loss": summary["val_loss"],
            "best_val_accuracy": summary["val_accuracy"],
            "fit_seconds": fit_seconds,
        }
    )
    _write_history(hist, out / HISTORY_CSV)
    history_plot(hist, out / HISTORY_PNG, best_epoch)
    mlflow.log_artifact(str(out / HISTORY_PNG), "plots")
    mlflow.log_artifact(str(out / HISTORY_CSV), "plots")
    mlflow.log_artifact(str(out / MODEL_FILE), "checkpoints")

    info = log_served_model(out / MODEL_FILE, splits.x_val[:2], best_epoch)
    record = {"run_id": run_id, "model_uri": info.model_uri, **summary}
    write_json(out / RUN_FILE, record)
    return record, summary, fit_seconds
