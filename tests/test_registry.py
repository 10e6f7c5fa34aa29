"""Promotion rule and rollback, on a real MLflow registry with real smoke-trained models."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from helpers import smoke_config
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from fmnist_mlops.context import open_stage
from fmnist_mlops.data import load_prepared
from fmnist_mlops.errors import RegistryError
from fmnist_mlops.evaluation import evaluate
from fmnist_mlops.paths import PROMOTION_JSON
from fmnist_mlops.promotion import promote, rollback
from fmnist_mlops.registry import decide
from fmnist_mlops.scoring import assess, load_network
from fmnist_mlops.training import train


@pytest.mark.parametrize(
    ("candidate", "champion", "mode", "min_delta", "floor", "promote_"),
    [
        (0.90, None, "max", 0.0, 0.85, True),  # first model above the floor
        (0.80, None, "max", 0.0, 0.85, False),  # first model below the floor
        (0.91, 0.90, "max", 0.0, 0.85, True),
        (0.90, 0.90, "max", 0.0, 0.85, False),  # a tie is not an improvement
        (0.905, 0.90, "max", 0.01, 0.85, False),  # not by more than min_delta
        (0.911, 0.90, "max", 0.01, 0.85, True),
        (0.95, 0.90, "max", 0.0, 0.96, False),  # better, but under the floor
        (0.20, 0.25, "min", 0.0, 0.30, True),  # loss: lower is better, floor is a ceiling
        (0.25, 0.20, "min", 0.0, 0.30, False),
        (0.35, None, "min", 0.0, 0.30, False),
    ],
)
def test_promotion_rule(candidate, champion, mode, min_delta, floor, promote_):
    decision = decide(candidate, champion, mode=mode, min_delta=min_delta, floor=floor)
    assert decision.promote is promote_ and decision.reason


def pipeline(tmp: Path, prepared: Path, uri: str, *overrides: str):
    cfg = smoke_config(tmp, prepared, *overrides)
    with open_dict(cfg):
        cfg.mlflow.tracking_uri = uri
    train(open_stage(cfg))
    evaluate(open_stage(cfg))
    return cfg


def test_promote_compare_rescored_champion_and_rollback(tmp_path, smoke_prepared):
    uri = f"sqlite:///{tmp_path / 'shared.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    weak = pipeline(tmp_path / "weak", smoke_prepared, uri, "train.epochs=1")
    first = promote(open_stage(weak))
    assert (
        first["promote"] and first["candidate_version"] == 1 and first["champion_version"] is None
    )
    assert str(client.get_model_version_by_alias("fashion-mnist-cnn", "champion").version) == "1"

    strong = pipeline(tmp_path / "strong", smoke_prepared, uri, "train.epochs=2")
    second = promote(open_stage(strong))
    assert second["candidate_score"] > second["champion_score"], "2 epochs beat 1 on this seed"
    assert second["promote"] and second["champion_after"] == 2 and second["champion_version"] == 1
    # The champion was re-scored on the current validation split, not read from its run.
    splits = load_prepared(smoke_prepared)
    v1 = load_network("models:/fashion-mnist-cnn/1")
    assert second["champion_score"] == pytest.approx(
        assess(v1, splits.x_val, splits.y_val).accuracy
    )
    on_disk = json.loads((Path(strong.paths.out) / PROMOTION_JSON).read_text())
    assert on_disk == second

    # The same run and weights again: a no-op that says so (no third version, alias unmoved).
    third = promote(open_stage(strong))
    assert not third["promote"] and third["candidate_version"] == 2 and third["champion_after"] == 2
    assert "already registered as version 2" in third["reason"]
    assert len(client.search_model_versions("name='fashion-mnist-cnn'")) == 2
    run = client.get_run(third["run_id"])
    assert run.data.tags["registry.version"] == "2"

    assert rollback(open_stage(strong)) == {
        "model_name": "fashion-mnist-cnn",
        "from_version": 2,
        "to_version": 1,
    }
    assert str(client.get_model_version_by_alias("fashion-mnist-cnn", "champion").version) == "1"
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(open_stage(strong))


def test_floor_blocks_a_weak_first_model(tmp_path, smoke_prepared):
    uri = f"sqlite:///{tmp_path / 'floor.db'}"
    cfg = pipeline(tmp_path, smoke_prepared, uri, "train.epochs=1", "registry.floor=0.99")
    decision = promote(open_stage(cfg))
    assert not decision["promote"] and "floor" in decision["reason"]
    client = MlflowClient(uri, registry_uri=uri)
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    with pytest.raises(RegistryError, match="has no @champion"):
        rollback(open_stage(cfg))


def start_register(cfg, prepared, uri, lock_url=None):
    """A real `python src/register.py` for the model that `cfg`'s pipeline trained."""
    import subprocess
    import sys

    from helpers import ROOT, venv_env

    cmd = [
        sys.executable,
        "src/register.py",
        "+experiment=smoke",
        f"paths.out={cfg.paths.out}",
        f"paths.prepared={prepared}",
        f"paths.scratch={cfg.paths.scratch}",
        f"mlflow.tracking_uri={uri}",
    ]
    if lock_url:
        cmd.append(f"registry.lock_url={lock_url}")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def race_promotions(tmp_path, prepared, lock_url=None):
    """Two processes promote a weak and a strong model at once; returns the client, the
    champion and the strong model's run id."""
    uri = f"sqlite:///{tmp_path / 'race.db'}"
    weak = pipeline(tmp_path / "weak", prepared, uri, "train.epochs=1")
    strong = pipeline(tmp_path / "strong", prepared, uri, "train.epochs=2")
    procs = [start_register(c, prepared, uri, lock_url) for c in (weak, strong)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    strong_run = json.loads((Path(strong.paths.out) / "models/run.json").read_text())["run_id"]
    return client, champion, strong_run


def test_two_promotions_at_the_same_moment_end_on_the_better_model(tmp_path, smoke_prepared):
    """Two real processes promote at once; the lock serialises compare-and-move."""
    client, champion, strong_run = race_promotions(tmp_path, smoke_prepared)
    assert champion.run_id == strong_run, "whatever the order, the better model holds @champion"
    assert len(client.search_model_versions("name='fashion-mnist-cnn'")) == 2


def test_rollback_to_a_deleted_version_and_a_report_without_its_run_are_one_line_errors(
    tmp_path, smoke_prepared
):
    import subprocess
    import sys

    from fmnist_mlops.reporting import build_report

    uri = f"sqlite:///{tmp_path / 'gone.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    weak = pipeline(tmp_path / "weak", smoke_prepared, uri, "train.epochs=1")
    assert promote(open_stage(weak))["promote"]
    strong = pipeline(tmp_path / "strong", smoke_prepared, uri, "train.epochs=2")
    assert promote(open_stage(strong))["champion_after"] == 2

    client.delete_model_version("fashion-mnist-cnn", "1")
    with pytest.raises(RegistryError, match=r"version 1, the champion before version 2, was del"):
        rollback(open_stage(strong))
    assert str(client.get_model_version_by_alias("fashion-mnist-cnn", "champion").version) == "2"

    run_id = client.get_model_version("fashion-mnist-cnn", "2").run_id
    client.delete_run(run_id)
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    subprocess.run([mlflow_bin, "gc", "--backend-store-uri", uri], check=True, capture_output=True)
    with pytest.raises(RegistryError, match=f"whose run {run_id} is gone") as err:
        build_report(open_stage(strong), out=tmp_path / "r.html")
    assert "\n" not in str(err.value) and not (tmp_path / "r.html").exists()
