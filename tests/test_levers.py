"""Training levers: what the weight average (EMA) and test-time augmentation (TTA) predict with
is what validation, the checkpoint, the evaluation and a real `mlflow models serve` use."""

from __future__ import annotations

import csv
import json
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import free_port, http_process, pipeline, venv_env
from mlflow.tracking import MlflowClient

from fmnist_mlops.data.splits import load_prepared
from fmnist_mlops.runtime.paths import MODEL_FILE, PREDICTIONS_CSV

# The one-cycle schedule and label smoothing on both; the average (and TTA) on one only.
COMMON = (
    "train.epochs=3",
    "train.patience=3",
    "train.schedule=onecycle",
    "train.label_smoothing=0.1",
)
AVERAGED = ("train.ema=0.9", "model.tta_shift=2")


def shifted(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``images`` moved by ``rows`` down and ``cols`` right, background (0) filled in."""
    out = np.zeros_like(images)
    h, w = images.shape[1:]
    out[:, max(rows, 0) : h + min(rows, 0), max(cols, 0) : w + min(cols, 0)] = images[
        :, max(-rows, 0) : h - max(rows, 0), max(-cols, 0) : w - max(cols, 0)
    ]
    return out


@pytest.mark.parametrize("shift", [1, 3])
def test_tta_averages_the_image_and_its_four_shifted_copies(shift):
    import keras

    from fmnist_mlops.model.cnn import with_shift_tta

    inputs = keras.Input(shape=(28, 28))
    flat = keras.layers.Flatten()(inputs)
    network = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(flat))
    images = np.random.default_rng(0).uniform(0, 255, (4, 28, 28)).astype(np.float32)
    moves = [(0, 0), (shift, 0), (-shift, 0), (0, shift), (0, -shift)]
    by_hand = np.mean([network.predict(shifted(images, r, c), verbose=0) for r, c in moves], axis=0)
    wrapped = with_shift_tta(network, shift)
    np.testing.assert_allclose(wrapped.predict(images, verbose=0), by_hand, atol=1e-6)
    assert with_shift_tta(network, 0) is network
    assert len(wrapped.get_weights()) == len(network.get_weights())  # shared, not copied


@pytest.fixture(scope="module")
def lever_runs(tmp_path_factory, smoke_prepared):
    """The same seed trained plain and with EMA + TTA; the second promoted to @champion."""
    from fmnist_mlops.registry.promotion import promote
    from fmnist_mlops.tracking.context import open_stage

    tmp = tmp_path_factory.mktemp("levers")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    plain = pipeline(tmp / "plain", smoke_prepared, uri, *COMMON)
    averaged = pipeline(tmp / "averaged", smoke_prepared, uri, *COMMON, *AVERAGED)
    promote(open_stage(averaged))
    return plain, averaged


def _run(cfg) -> tuple[MlflowClient, str]:
    run = json.loads((Path(cfg.paths.out) / "models" / "run.json").read_text())
    return MlflowClient(cfg.mlflow.tracking_uri), run["run_id"]


def _history(cfg, key: str) -> list[float]:
    client, run_id = _run(cfg)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.integration
def test_validation_and_the_checkpoint_see_the_averaged_weights(lever_runs, smoke_prepared):
    import keras

    plain, averaged = lever_runs
    # The average never feeds back into training: the same seed takes the same steps ...
    assert _history(averaged, "loss") == _history(plain, "loss")
    # ... but every epoch is validated on the average, not on the raw weights.
    assert _history(averaged, "val_accuracy") != _history(plain, "val_accuracy")
    published = keras.saving.load_model(
        str(Path(averaged.paths.out) / MODEL_FILE), safe_mode=True, compile=False
    )
    network = published.get_layer("fmnist_cnn")  # inside the TTA wrapper
    splits = load_prepared(smoke_prepared)
    accuracy = float(
        (
            network.predict(splits.x_val.astype(np.float32), verbose=0).argmax(1) == splits.y_val
        ).mean()
    )
    client, run_id = _run(averaged)
    best = int(client.get_run(run_id).data.metrics["best_epoch"])
    # The published network is the one validated at the best epoch: the average, restored.
    assert accuracy == pytest.approx(_history(averaged, "val_accuracy")[best], abs=1e-6)


@pytest.mark.integration
def test_the_served_model_averages_shifted_copies_as_the_evaluation_did(
    lever_runs, smoke_prepared, tmp_path
):
    import keras

    _, averaged = lever_runs
    splits = load_prepared(smoke_prepared)
    images = splits.x_test[:16].astype(np.float32)
    published = keras.saving.load_model(
        str(Path(averaged.paths.out) / MODEL_FILE), safe_mode=True, compile=False
    )
    network = published.get_layer("fmnist_cnn")
    moves = [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)]
    by_hand = np.mean([network.predict(shifted(images, r, c), verbose=0) for r, c in moves], axis=0)

    port = free_port()
    env = venv_env(MLFLOW_TRACKING_URI=averaged.mlflow.tracking_uri)
    cmd = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m"]
    cmd += ["models:/fashion-mnist-cnn@champion", "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with http_process(cmd, env, f"{url}/ping", tmp_path / "serve.log"):
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": images.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            served = json.loads(resp.read())["predictions"]

    probabilities = np.array([s["probabilities"] for s in served])
    np.testing.assert_allclose(probabilities, by_hand, atol=1e-5)
    # predict.py's way in: the registered model loaded in-process.
    mlflow.set_tracking_uri(averaged.mlflow.tracking_uri)
    mlflow.set_registry_uri(averaged.mlflow.tracking_uri)
    local = mlflow.pyfunc.load_model("models:/fashion-mnist-cnn@champion").predict(images)
    np.testing.assert_allclose([p["probabilities"] for p in local], by_hand, atol=1e-5)
    with open(Path(averaged.paths.out) / PREDICTIONS_CSV) as fh:
        evaluated = list(csv.DictReader(fh))[: len(images)]
    assert [s["class"] for s in served] == [row["predicted"] for row in evaluated]
    for s, row in zip(served, evaluated, strict=True):
        assert s["probability"] == pytest.approx(float(row["probability"]), abs=1e-5)
