"""The ``train`` stage: fit the CNN with a best-only checkpoint and early stopping, tracked."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import mlflow

from fmnist_mlops.config.schema import Config, derived
from fmnist_mlops.runtime.errors import Interrupted, TrainingDiverged, raise_if_interrupted
from fmnist_mlops.runtime.files import write_json
from fmnist_mlops.runtime.folders import writable_dir
from fmnist_mlops.runtime.paths import (
    HISTORY_CSV,
    HISTORY_PNG,
    MODEL_FILE,
    RUN_FILE,
    backups_root,
    resolve,
    scratch_root,
)
from fmnist_mlops.tracking import nesting
from fmnist_mlops.tracking.context import StageContext
from fmnist_mlops.tracking.logged_params import log_config
from fmnist_mlops.tracking.runs import (
    RAW_DIGEST_TAG,
    mark_orphaned_runs,
    reopen,
    run_exists,
    run_record,
)
from fmnist_mlops.tracking.scratch import out_dir
from fmnist_mlops.tracking.tags import run_tags
from fmnist_mlops.train import backup, claims, cluster, provenance, workers
from fmnist_mlops.train import callbacks as callbacks_lib
from fmnist_mlops.train.fitting import fit, weights_sha256
from fmnist_mlops.train.history import (
    history_plot,
    logged_metrics,
    time_to_accuracy,
    write_history,
)
from fmnist_mlops.train.model_logging import log_served_model

log = logging.getLogger(__name__)


def train(
    ctx: StageContext,
    tags: dict[str, str] | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict[str, Any]:
    """Train one model and track it in MLflow (the ``train`` stage and ad-hoc runs).

    Writes ``models/model.keras`` (best checkpoint), ``models/run.json`` (MLflow run id),
    ``reports/history.{csv,png}`` under ``paths.out`` (a scratch folder when it is null).

    Args:
        ctx: The stage's context (:func:`~fmnist_mlops.tracking.context.open_stage`).
        tags: Extra tags for the new MLflow run (the tuner nests its trials with them).
        callbacks: Extra Keras callbacks for ``fit`` (the tuner's pruning callback).

    Returns:
        ``run_id``, ``best_epoch``, ``epochs_trained`` and the best epoch's ``val_loss`` /
        ``val_accuracy``, plus ``out_dir``.
    """
    config = ctx.config
    role = cluster.role(config.train.distribute)
    paths = config.paths
    workers.join_cluster(ctx.config, ctx.cfg)
    splits = ctx.splits
    if not role.chief:
        return _peer_training(ctx, role)
    # An output folder that cannot work is refused before any run exists.
    if paths.out is None:
        writable_dir("paths.scratch", scratch_root(paths.scratch))
    else:
        writable_dir("paths.out", resolve(paths.out))
    mark_orphaned_runs(ctx.track())

    cfg_hash = backup.config_hash(ctx.cfg, splits.meta)
    done = nesting.finished_run(cfg_hash)
    if done is not None:
        log.info("train: run %s of this sweep trained this job already: not trained again", done)
        return {**run_record(done, splits.meta), "out_dir": None}
    folder, restored = claims.claim(
        backups_root(ctx.tracking_uri),
        cfg_hash,
        None if paths.out is None else str(resolve(paths.out)),
        paths.out,
        run_exists,
    )
    try:
        workers.share_backup(config, restored)
        tags = {**(tags or {}), "distribute.workers": str(role.workers)}
        return _claimed_training(ctx, folder, restored, cfg_hash, tags, callbacks)
    except BaseException:
        claims.release(folder)
        raise


def _claimed_training(ctx: StageContext, folder, restored, cfg_hash, tags, callbacks):
    """The MLflow run of :func:`train` (new or resumed) around the fit, in a claimed backup."""
    paths = ctx.config.paths
    out = out_dir(paths.out, "train", paths.scratch)
    system_metrics = ctx.config.mlflow.system_metrics
    if restored is None:
        start_tags = {
            **run_tags("train"),
            **nesting.child_tags(),
            **(tags or {}),
            "out_dir": str(out),
            "config_hash": cfg_hash,
        }
        active = mlflow.start_run(tags=start_tags, log_system_metrics=system_metrics)
        claims.name_run(folder, active.info.run_id)
    else:
        log.info(
            "train: resuming run %s after epoch %d (backup %s)",
            restored.run_id,
            restored.epoch,
            folder,
        )
        active = reopen(
            restored.run_id,
            {
                **run_tags("train"),
                # A continued sweep's or study's parent (which may be new): nest under it.
                **nesting.child_tags(),
                **(tags or {}),
                "config_hash": cfg_hash,
                "resumed_after_epoch": str(restored.epoch),
                "out_dir": str(out),
            },
            log_system_metrics=system_metrics,
        )

    with active as run:
        spec = backup.EpochBackupSpec(folder, run.info.run_id, cfg_hash)
        try:
            record, summary, fit_seconds = _tracked_training(
                ctx, out, run, spec, restored, callbacks
            )
            raise_if_interrupted()  # held back during a store call: the run is not finished
        except Interrupted:
            mlflow.end_run(status="KILLED")
            log.warning(
                "train: run %s marked KILLED; the same command resumes it from %s",
                run.info.run_id,
                folder,
            )
            raise
        except TrainingDiverged as exc:
            backup.clear(folder)  # resuming would diverge again
            mlflow.set_tag("failure", str(exc))
            mlflow.end_run(status="FAILED")
            raise TrainingDiverged(f"{exc}; run {run.info.run_id} marked FAILED") from None
    backup.clear(folder)
    log.info(
        "train: done in %.1f s, best epoch %d of %d, val_accuracy %.4f",
        fit_seconds,
        summary["best_epoch"],
        summary["epochs_trained"],
        summary["val_accuracy"],
    )
    return {**record, "out_dir": str(out)}


def _peer_training(ctx: StageContext, role: cluster.Role) -> dict[str, Any]:
    """A non-chief worker: the same fit, in step with the chief, writing nothing shared.

    No MLflow, no claim or backup, nothing under ``paths.out``: its checkpoint goes to a
    temporary folder (TensorFlow's convention), deleted at the end. A resumed training
    continues from the backup the chief named, read and never changed.
    """
    log.info(
        "train: worker %d of %d (not the chief): nothing shared written", role.index, role.workers
    )
    config, splits = ctx.config, ctx.splits
    folder = workers.share_backup(config, None)
    restored = None
    if folder is not None:
        cfg_hash = backup.config_hash(ctx.cfg, splits.meta)
        restored = backup.load(Path(folder), cfg_hash, discard=False)
    with tempfile.TemporaryDirectory(prefix=f"fmnist-worker{role.index}-") as tmp:
        model, hist, best_epoch = fit(
            config.train, config.model, config.seed, splits, Path(tmp), restored=restored
        )
    return {
        "worker": role.index,
        "best_epoch": best_epoch,
        "epochs_trained": len(hist["loss"]),
        "val_accuracy": hist["val_accuracy"][best_epoch],
        "weights_sha256": weights_sha256(model),
    }


def _log_missing_epochs(run_id: str, history: dict[str, list[float]]) -> None:
    """Log epochs that made it into a backup but not into MLflow before an interruption."""
    client = mlflow.tracking.MlflowClient()
    logged = {m.step for m in client.get_metric_history(run_id, "val_loss")}
    for epoch in range(len(history.get("loss", []))):
        if epoch not in logged:
            logs = {k: v[epoch] for k, v in history.items() if epoch < len(v)}
            mlflow.log_metrics(logged_metrics(logs), step=epoch, synchronous=True)


def _tracked_training(ctx: StageContext, out, run, spec, restored, callbacks=()):
    """Everything ``train`` logs inside its MLflow run; returns (record, summary, fit seconds).

    ``ctx.cfg`` (the composed DictConfig) is what gets logged as params; ``ctx.config`` is its
    typed form, which the training itself reads.
    """
    config, splits = ctx.config, ctx.splits
    run_id = run.info.run_id
    log.info("train: MLflow run %s, outputs in %s", run_id, out)
    provenance.record(ctx.prepared)
    if restored is not None:
        _log_missing_epochs(run_id, restored.history)
        return _fit_and_log(config, splits, out, run_id, spec, restored, callbacks)
    log_config(ctx.cfg, derived(config))
    mlflow.set_tags({f"{RAW_DIGEST_TAG}{k}": v for k, v in splits.meta["sha256"].items()})
    mlflow.set_tag("data.source", splits.meta["source"])
    for name, x, y in (
        ("train", splits.x_train, splits.y_train),
        ("val", splits.x_val, splits.y_val),
    ):
        with warnings.catch_warnings():
            # MLflow registers two equivalent local-path source types and warns about it.
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(
                features=x, targets=y, name=f"fashion-mnist-{name}", source=str(ctx.prepared)
            )
        mlflow.log_input(dataset, context="training" if name == "train" else "validation")

    return _fit_and_log(config, splits, out, run_id, spec, None, callbacks)


def _fit_and_log(config: Config, splits, out, run_id, spec, restored, callbacks=()):
    started = time.perf_counter()
    model, hist, best_epoch = fit(
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
        "weights_sha256": weights_sha256(model),
    }
    mlflow.log_metrics(
        {
            "best_epoch": best_epoch,
            "epochs_trained": summary["epochs_trained"],
            "best_val_loss": summary["val_loss"],
            "best_val_accuracy": summary["val_accuracy"],
            "fit_seconds": fit_seconds,
            **time_to_accuracy(hist),
        }
    )
    mlflow.set_tags({"weights_sha256": summary["weights_sha256"], **provenance.threads()})
    write_history(hist, out / HISTORY_CSV)
    history_plot(hist, out / HISTORY_PNG, best_epoch)
    mlflow.log_artifact(str(out / HISTORY_PNG), "plots")
    mlflow.log_artifact(str(out / HISTORY_CSV), "plots")
    mlflow.log_artifact(str(out / MODEL_FILE), "checkpoints")

    info = log_served_model(out / MODEL_FILE, splits.x_val[:2], best_epoch)
    record = {"run_id": run_id, "model_uri": info.model_uri, **summary}
    write_json(out / RUN_FILE, record)
    return record, summary, fit_seconds
