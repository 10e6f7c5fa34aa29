"""Training + evaluation on the real smoke split, checked through MLflow's client."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from helpers import evaluate, fit, smoke_config, train
from mlflow.tracking import MlflowClient

from fmnist_mlops.config.compose import validate
from fmnist_mlops.runtime.paths import METRICS_JSON, MODEL_FILE, PREDICTIONS_CSV, RUN_FILE
from fmnist_mlops.tracking.context import open_stage
from fmnist_mlops.tracking.logged_params import redact

pytestmark = pytest.mark.integration


def epoch_metrics() -> tuple[str, ...]:
    from fmnist_mlops.train.history import EPOCH_METRICS

    return EPOCH_METRICS


@pytest.fixture
def trained(champion):
    """The session's smoke run (a private copy): its config, what train returned, a client."""
    from fmnist_mlops.tracking import store

    store.connect(champion.mlflow.tracking_uri)  # as train left it: models:/ URIs resolve
    result = {
        **json.loads((Path(champion.paths.out) / RUN_FILE).read_text()),
        "out_dir": champion.paths.out,
    }
    return champion, result, MlflowClient(champion.mlflow.tracking_uri)


def test_train_logs_params_epoch_history_artifacts_and_model(trained):
    import keras

    from fmnist_mlops.evaluate.scoring import load_network

    cfg, result, client = trained
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.filters"] == "[32, 64]"
    assert run.data.params["train.epochs"] == "2" and run.data.params["seed"] == "42"
    for metric in epoch_metrics():
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert steps == [0, 1], metric
    assert run.data.metrics["best_epoch"] == result["best_epoch"]
    tags = run.data.tags
    assert tags["data.sha256.train-images"].startswith("c59f468a")
    assert "git_commit" in tags and tags["git_dirty"] in ("true", "false")
    # train.precision: auto, resolved for this CPU and recorded on the run.
    from fmnist_mlops.train import platforms

    assert tags["precision.resolved"] == platforms.resolve_precision("auto")
    assert tags["distribute.replicas"] == "1"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "plots", "checkpoints"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/history.png" in plots
    inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert inputs == {"fashion-mnist-train", "fashion-mnist-val"}

    logged = load_network(result["model_uri"])
    sig = mlflow.models.get_model_info(result["model_uri"]).signature
    # No input schema (the model checks its pixels itself, any dtype); the top_k param.
    assert sig.inputs is None and [p.name for p in sig.params.params] == ["top_k"]
    best = keras.saving.load_model(f"{cfg.paths.out}/{MODEL_FILE}", safe_mode=True)
    for a, b in zip(logged.get_weights(), best.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert json.loads((Path(cfg.paths.out) / RUN_FILE).read_text())["run_id"] == result["run_id"]


def test_same_seed_same_metrics_other_seed_differs(trained, tmp_path, smoke_prepared):
    _, a, _ = trained  # trained once per session, in whichever test process got there first
    b = train(open_stage(smoke_config(tmp_path / "b", smoke_prepared)))
    c = train(open_stage(smoke_config(tmp_path / "c", smoke_prepared, "seed=7")))
    assert (a["val_loss"], a["val_accuracy"]) == (b["val_loss"], b["val_accuracy"])
    assert a["weights_sha256"] == b["weights_sha256"]
    assert a["val_loss"] != c["val_loss"]


def test_evaluate_reopens_the_train_run_and_writes_reports(trained):
    cfg, result, client = trained
    metrics = evaluate(open_stage(cfg))
    assert metrics["run_id"] == result["run_id"]
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert run.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"])
    assert "test_f1.Ankle boot" in run.data.metrics
    assert len(client.search_runs([run.info.experiment_id])) == 1, (
        "evaluate must not start a new run"
    )
    out = Path(cfg.paths.out)
    on_disk = json.loads((out / METRICS_JSON).read_text())
    assert on_disk == metrics and 0.0 <= on_disk["test_accuracy"] <= 1.0
    rows = (out / PREDICTIONS_CSV).read_text().splitlines()
    assert (
        rows[0] == "index,actual,predicted,probability" and len(rows) == 1 + metrics["test_images"]
    )
    evaluation = {a.path for a in client.list_artifacts(result["run_id"], "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/misclassified.png"} <= evaluation
    # Accuracy in metrics.json is exactly the share of correct rows in the predictions file.
    correct = sum(1 for r in rows[1:] if r.split(",")[1] == r.split(",")[2])
    assert correct / metrics["test_images"] == pytest.approx(metrics["test_accuracy"])


def test_secrets_in_config_are_never_logged(tmp_path, smoke_prepared):
    from omegaconf import open_dict

    assert redact({"mlflow.s3_secret_access_key": "AKIA", "x.api_key": "k", "seed": 1}) == {
        "mlflow.s3_secret_access_key": "***",
        "x.api_key": "***",
        "seed": 1,
    }
    cfg = smoke_config(tmp_path, smoke_prepared, "train.epochs=1")
    with open_dict(cfg):  # credentials in a mirror URL: a real field a user might fill
        cfg.data.base_url = "https://alice:hunter2@mirror.internal/fashion-mnist/"
    result = train(open_stage(cfg))
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.data.params["data.base_url"] == "https://***@mirror.internal/fashion-mnist/"
    logged = client.download_artifacts(result["run_id"], "config.yaml", str(tmp_path))
    assert "hunter2" not in Path(logged).read_text()
    assert "hunter2" not in json.dumps(run.data.tags)


def test_each_epoch_trains_every_batch_once_in_whole_executions(tmp_path, smoke_prepared):
    """Several steps run per call into TensorFlow, yet an epoch stays one pass over the data."""
    import keras

    from fmnist_mlops.data.splits import load_prepared

    cfg = smoke_config(tmp_path, smoke_prepared, "train.batch_size=32", "train.epochs=2")
    splits = load_prepared(smoke_prepared)
    steps = len(splits.x_train) // 32  # 512 images: 16 full batches

    class LastBatch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.calls = []

        def on_train_batch_end(self, batch, logs=None):
            self.calls.append(batch)

        def on_epoch_end(self, epoch, logs=None):
            seen.append((self.calls[-1], len(self.calls)))

    seen: list[tuple[int, int]] = []
    c = validate(cfg)
    model, _, _ = fit(
        c.train,
        c.model,
        c.seed,
        splits,
        tmp_path / "out",
        extra_callbacks=[LastBatch()],
    )
    assert model.steps_per_execution > 1
    assert seen == [(steps - 1, steps // model.steps_per_execution)] * 2


def test_the_logged_model_carries_the_restored_epoch_and_the_test_scores(smoke_cfg):
    from omegaconf import open_dict

    with open_dict(smoke_cfg):
        smoke_cfg.train.epochs = 4
        smoke_cfg.train.patience = 4
        smoke_cfg.train.monitor = "val_accuracy"
    result = train(open_stage(smoke_cfg))
    metrics = evaluate(open_stage(smoke_cfg))
    client = MlflowClient(smoke_cfg.mlflow.tracking_uri)
    run = client.get_run(result["run_id"])
    best = int(run.data.metrics["best_epoch"])
    history = {
        key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        for key in epoch_metrics()
    }
    assert best != 0 and history["val_accuracy"][best] > history["val_accuracy"][0]

    mlflow.set_tracking_uri(smoke_cfg.mlflow.tracking_uri)
    want = history["val_accuracy"][best]
    found = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"metrics.val_accuracy >= {want - 1e-6}",
        output_format="list",
    )
    [model] = found
    assert f"models:/{model.model_id}" == result["model_uri"]
    linked = {m.key: (m.step, m.value) for m in model.metrics}
    for key in epoch_metrics():
        assert linked[key] == (best, pytest.approx(history[key][best])), key
    assert linked["test_accuracy"][1] == pytest.approx(metrics["test_accuracy"])
    assert linked["test_loss"][1] == pytest.approx(metrics["test_loss"])


def test_a_failing_training_leaves_the_published_model_untouched(tmp_path, smoke_prepared):
    """models/model.keras (a DVC output) is published once, verified; never half-written."""
    import keras

    from fmnist_mlops.data.splits import load_prepared

    cfg = smoke_config(tmp_path, smoke_prepared, "train.epochs=2")
    splits = load_prepared(smoke_prepared)
    out = tmp_path / "out"
    c = validate(cfg)
    fit(c.train, c.model, c.seed, splits, out)
    published = out / MODEL_FILE
    before = published.read_bytes()

    class FailAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            assert published.read_bytes() == before, "the checkpoint overwrote the published model"
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        fit(
            c.train,
            c.model,
            c.seed,
            splits,
            out,
            extra_callbacks=[FailAfterFirstEpoch()],
        )
    assert published.read_bytes() == before
    assert sorted(p.name for p in published.parent.iterdir()) == [published.name]
