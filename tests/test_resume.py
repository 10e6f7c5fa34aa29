"""Resume: an interrupted training continues from its last finished epoch, in the same run."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import (
    ROOT,
    clone_store,
    fit,
    smoke_config,
    start_training,
    train,
    training_command,
    venv_env,
)
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from fmnist_mlops.config.compose import validate
from fmnist_mlops.data.splits import load_prepared
from fmnist_mlops.runtime.errors import ConfigError, Interrupted
from fmnist_mlops.runtime.paths import MODEL_FILE
from fmnist_mlops.tracking.context import open_stage
from fmnist_mlops.train import backup


@pytest.mark.integration
def test_same_command_resumes_the_same_run_with_a_continuous_history(tmp_path, smoke_prepared):
    proc, uri = start_training(tmp_path, smoke_prepared, epochs=30)  # interrupted early
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-1500:]
    client = MlflowClient(uri)
    [killed] = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    assert killed.info.status == "KILLED"
    [backup] = (tmp_path / ".backups").glob("train-*")
    state = json.loads((backup / "state.json").read_text())
    assert state["run_id"] == killed.info.run_id and state["epoch"] >= 0

    # Exactly the same command again (patience = epochs: early stopping does not end it).
    cmd, _ = training_command(tmp_path, smoke_prepared, 30)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    assert f"resuming run {killed.info.run_id} after epoch {state['epoch']}" in err
    runs = client.search_runs([killed.info.experiment_id])
    assert [r.info.run_id for r in runs] == [killed.info.run_id], "no second run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed_after_epoch"] == str(state["epoch"])
    for metric in ("loss", "val_loss", "accuracy", "val_accuracy", "fit_elapsed_s"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert steps == list(range(30)), f"{metric}: no duplicated or missing epochs"
    # Training time is summed over both segments: it keeps growing across the resume.
    elapsed = sorted(
        client.get_metric_history(run.info.run_id, "fit_elapsed_s"), key=lambda m: m.step
    )
    assert all(a.value < b.value for a, b in zip(elapsed, elapsed[1:], strict=False))
    assert elapsed[-1].value > run.data.metrics["fit_seconds"], "the first segment counts too"
    assert not backup.exists(), "a finished training removes its backup"


BACKUP_OVERRIDES = ("train.epochs=2", "train.patience=5")


@pytest.fixture(scope="session")
def backup_template(build_once, smoke_prepared) -> Path:
    """A store with one run and the backup its fit left after two epochs (built once)."""

    def build(folder: Path) -> None:
        cfg = smoke_config(folder, smoke_prepared, *BACKUP_OVERRIDES)
        splits = load_prepared(smoke_prepared)
        mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
        mlflow.set_experiment("resume-test")  # the active experiment is global: set it here
        with mlflow.start_run() as run:
            c = validate(cfg)
            h = backup.config_hash(cfg, splits.meta)
            spec = backup.EpochBackupSpec(folder / "backup", run.info.run_id, h)
            fit(c.train, c.model, c.seed, splits, folder / "out", backup=spec)

    return build_once("backup", build)


@pytest.fixture
def backup_after_two_epochs(backup_template, smoke_prepared):
    """``copy(folder)``: a private copy of the backup template in ``folder``:
    (its config, the split, the backup folder, the config's hash)."""

    def copy(tmp_path: Path):
        clone_store(backup_template, tmp_path)
        cfg = smoke_config(tmp_path, smoke_prepared, *BACKUP_OVERRIDES)
        splits = load_prepared(smoke_prepared)
        mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
        return cfg, splits, tmp_path / "backup", backup.config_hash(cfg, splits.meta)

    return copy


@pytest.mark.integration
def test_worse_first_resumed_epoch_cannot_overwrite_the_best_checkpoint(
    tmp_path, backup_after_two_epochs
):
    cfg, splits, folder, h = backup_after_two_epochs(tmp_path / "copy")
    state_path = folder / "state.json"
    state = json.loads(state_path.read_text())
    # Pretend the best epoch so far was unbeatable: nothing after it may replace it.
    state["checkpoint_best"] = state["early"]["best"] = 1e-9
    state_path.write_text(json.dumps(state))
    best_before = (folder / state["files"]["best"]).read_bytes()
    restored = backup.load(folder, h)
    assert restored is not None and restored.epoch == 1
    with open_dict(cfg):
        cfg.train.epochs = 3
    out = tmp_path / "resumed"
    with mlflow.start_run(run_id=restored.run_id):
        c = validate(cfg)
        _, hist, best_epoch = fit(c.train, c.model, c.seed, splits, out, restored=restored)
    assert len(hist["loss"]) == 3, "two restored epochs + one new"
    assert best_epoch == state["early"]["best_epoch"]
    assert (out / MODEL_FILE).read_bytes() == best_before


@pytest.mark.integration
def test_corrupt_or_foreign_backups_are_discarded(tmp_path, backup_after_two_epochs, caplog):
    _, _, folder, h = backup_after_two_epochs(tmp_path / "first")
    caplog.set_level(logging.WARNING)
    # A peer worker reads the chief's backup: it refuses one it cannot use and deletes nothing.
    assert backup.load(folder, h, discard=False).epoch == 1
    with pytest.raises(ConfigError, match="cannot use .made for other settings"):
        backup.load(folder, "0" * 16, discard=False)
    with pytest.raises(ConfigError, match="cannot use .no backup there"):
        backup.load(tmp_path / "elsewhere", h, discard=False)
    assert folder.exists() and "discarding" not in caplog.text
    assert backup.load(folder, "0" * 16) is None
    assert "made for other settings" in caplog.text and not folder.exists()

    _, _, folder, h = backup_after_two_epochs(tmp_path / "again")
    last = folder / json.loads((folder / "state.json").read_text())["files"]["last"]
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    assert backup.load(folder, h) is None
    assert f"last model {last.name} is missing or corrupt" in caplog.text and not folder.exists()

    _, _, folder, h = backup_after_two_epochs(tmp_path / "third")
    (folder / "state.json").write_text("{not json")
    assert backup.load(folder, h) is None
    assert "unreadable state.json" in caplog.text


def InterruptAt(epoch: int, mid_epoch: bool):  # noqa: N802 - stands for the class it makes
    """A callback raising what a SIGINT raises, at the end of ``epoch`` or after its first step
    call (Keras is imported here, not when the tests are collected)."""
    import keras

    class InterruptAt(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.current = -1

        def on_epoch_begin(self, epoch_: int, logs=None) -> None:
            self.current = epoch_

        def on_train_batch_end(self, batch: int, logs=None) -> None:
            if mid_epoch and self.current == epoch:
                raise Interrupted(signal.SIGINT)

        def on_epoch_end(self, epoch_: int, logs=None) -> None:
            if not mid_epoch and epoch_ == epoch:
                raise Interrupted(signal.SIGINT)

    return InterruptAt()


LEVERS = ["train.ema=0.9", "train.schedule=onecycle", "train.label_smoothing=0.1"]
EXACT_CASES = {
    # Augmented batches, interrupted once epoch 0 is backed up.
    "augment-after-epoch-0": (["train.augment.flip=true", "train.augment.erase=0.5"], 0, False),
    # 86 batches per epoch, 43 per step call: the interrupt lands after the first call of epoch 2.
    "augment-mid-epoch-2": (
        ["train.augment.flip=true", "train.augment.erase=0.5", "train.batch_size=6"],
        2,
        True,
    ),
    "vgg-mid-epoch-2": (["model=vgg", "train.batch_size=6"], 2, True),
    # The backups hold the weight average swapped in; the one-cycle rate follows the step.
    "ema-onecycle-after-epoch-0": (
        [*LEVERS, "model.tta_shift=1"],
        0,
        False,
    ),
    "ema-onecycle-mid-epoch-2": ([*LEVERS, "train.batch_size=6"], 2, True),
}


def history_and_weights(cfg) -> tuple[dict, list]:
    import keras

    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr")
    }
    model = keras.saving.load_model(str(Path(cfg.paths.out) / MODEL_FILE), compile=False)
    return history, model.get_weights()


@pytest.mark.integration  # two to three in-process trainings per case
@pytest.mark.parametrize("case", sorted(EXACT_CASES))
def test_a_resumed_run_matches_an_uninterrupted_one_exactly(case, tmp_path, smoke_prepared):
    overrides, epoch, mid_epoch = EXACT_CASES[case]
    common = ["train.epochs=4", "train.patience=4", *overrides]
    reference = smoke_config(tmp_path / "reference", smoke_prepared, *common)
    train(open_stage(reference))

    cfg = smoke_config(tmp_path / "resumed", smoke_prepared, *common)
    with pytest.raises(Interrupted):
        train(open_stage(cfg), callbacks=[InterruptAt(epoch, mid_epoch)])
    result = train(open_stage(cfg))
    assert result["run_id"]

    expected_history, expected_weights = history_and_weights(reference)
    history, weights = history_and_weights(cfg)
    assert history == expected_history
    assert len(weights) == len(expected_weights)
    for got, want in zip(weights, expected_weights, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.integration  # three in-process trainings
def test_with_several_interrupted_runs_the_most_recent_is_resumed_and_the_others_named(
    tmp_path, smoke_prepared, caplog
):
    import subprocess

    cfg = smoke_config(tmp_path, smoke_prepared, "train.epochs=3", "train.patience=3")
    with open_dict(cfg):
        cfg.paths.out = None
    with pytest.raises(Interrupted):
        train(open_stage(cfg), callbacks=[InterruptAt(0, mid_epoch=False)])
    [first] = (tmp_path / ".backups").glob("train-*")
    claim_file = first / backup.CLAIM_FILE
    released = json.loads(claim_file.read_text())
    # Make the first run look live for a moment, so the next one cannot take it over.
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        from fmnist_mlops.runtime import owner

        live = {**owner.current(), "pid": stand_in.pid}
        live["process_start"] = owner.process_start(stand_in.pid)
        claim_file.write_text(json.dumps({**released, "owner": live}))
        with pytest.raises(Interrupted):
            train(open_stage(cfg), callbacks=[InterruptAt(1, mid_epoch=False)])
    finally:
        stand_in.kill()
        stand_in.wait()
    claim_file.write_text(json.dumps(released))
    second = next(p for p in (tmp_path / ".backups").glob("train-*") if p != first)
    runs = {
        folder: json.loads((folder / backup.STATE_FILE).read_text())["run_id"]
        for folder in (first, second)
    }
    assert runs[first] != runs[second]

    caplog.set_level(logging.INFO)
    result = train(open_stage(cfg))
    assert result["run_id"] == runs[second], "the most recent interrupted run"
    assert f"also {runs[first]}" in caplog.text and "2 interrupted run(s)" in caplog.text
    assert first.exists() and not second.exists(), "the other one is left for its own rerun"
