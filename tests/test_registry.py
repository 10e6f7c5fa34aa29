"""Promotion rule and rollback, on a real MLflow registry with real smoke-trained models."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from helpers import race_promotions
from mlflow.tracking import MlflowClient

from fmnist_mlops.data.splits import load_prepared
from fmnist_mlops.registry import history
from fmnist_mlops.registry.promotion import promote, rollback
from fmnist_mlops.registry.rule import decide
from fmnist_mlops.runtime.errors import RegistryError
from fmnist_mlops.runtime.paths import PROMOTION_JSON
from fmnist_mlops.tracking.context import open_stage


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


@pytest.mark.integration
def test_promote_compare_rescored_champion_and_rollback(trained_runs, smoke_prepared):
    from fmnist_mlops.evaluate.scoring import assess, load_network

    weak, strong = trained_runs["weak"], trained_runs["strong"]
    uri = weak.mlflow.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    first = promote(open_stage(weak))
    assert (
        first["promote"] and first["candidate_version"] == 1 and first["champion_version"] is None
    )
    assert str(client.get_model_version_by_alias("fashion-mnist-cnn", "champion").version) == "1"

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
        "move": 3,
        "undoes": 2,
    }
    assert str(client.get_model_version_by_alias("fashion-mnist-cnn", "champion").version) == "1"
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(open_stage(strong))


@pytest.mark.integration
def test_floor_blocks_a_weak_first_model(trained_runs):
    cfg = trained_runs["weak"]
    cfg.registry.floor = 0.99
    uri = cfg.mlflow.tracking_uri
    decision = promote(open_stage(cfg))
    assert not decision["promote"] and "floor" in decision["reason"]
    client = MlflowClient(uri, registry_uri=uri)
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    with pytest.raises(RegistryError, match="has no @champion"):
        rollback(open_stage(cfg))


@pytest.mark.integration
def test_two_promotions_at_the_same_moment_end_on_the_better_model(trained_runs, smoke_prepared):
    """Two real processes promote at once; the lock serialises compare-and-move."""
    client, champion, strong_run = race_promotions(trained_runs, smoke_prepared)
    assert champion.run_id == strong_run, "whatever the order, the better model holds @champion"
    assert len(client.search_model_versions("name='fashion-mnist-cnn'")) == 2
    # The history holds the moves in the order they happened, one number each, ending on it.
    moves = history.read(client, "fashion-mnist-cnn", "champion")
    assert [m.n for m in moves] == list(range(1, len(moves) + 1)) and 1 <= len(moves) <= 2
    assert moves[-1].to_version == int(champion.version) and moves[0].from_version is None
    assert all(b.from_version == a.to_version for a, b in zip(moves, moves[1:], strict=False))


@pytest.mark.integration
def test_rollback_to_a_deleted_version_and_a_report_without_its_run_are_one_line_errors(
    trained_runs, tmp_path
):
    import subprocess
    import sys

    from fmnist_mlops.evaluate.reporting import build_report

    weak, strong = trained_runs["weak"], trained_runs["strong"]
    uri = weak.mlflow.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    assert promote(open_stage(weak))["promote"]
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


def _walk(moves):
    return [(m.n, m.kind, m.from_version, m.to_version, m.undoes) for m in moves]


@pytest.mark.integration
def test_champion_history_keeps_every_move_and_rollbacks_walk_back_through_it(
    trained_runs, tmp_path
):
    import sys

    from helpers import ROOT, sh

    from fmnist_mlops.experiments.housekeeping import champion_chain, clean_runs

    runs = trained_runs
    uri = runs["weak"].mlflow.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    name = "fashion-mnist-cnn"

    def champion() -> int:
        return int(client.get_model_version_by_alias(name, "champion").version)

    for run_name in ("weak", "strong", "three"):
        assert promote(open_stage(runs[run_name]))["promote"], f"{run_name} beats the champion"
    first, second = rollback(open_stage(runs["weak"])), rollback(open_stage(runs["weak"]))
    assert (first["from_version"], first["to_version"], first["undoes"]) == (3, 2, 3)
    assert (second["from_version"], second["to_version"], second["undoes"]) == (2, 1, 2)
    assert champion() == 1
    fourth = promote(open_stage(runs["four"]))
    assert fourth["promote"] and fourth["candidate_version"] == 4 and champion() == 4

    moves = history.read(client, name, "champion")
    assert _walk(moves) == [
        (1, "promote", None, 1, None),
        (2, "promote", 1, 2, None),
        (3, "promote", 2, 3, None),
        (4, "rollback", 3, 2, 3),
        (5, "rollback", 2, 1, 2),
        (6, "promote", 1, 4, None),
    ]
    assert [m.at for m in moves] == sorted(m.at for m in moves)
    for move in (m for m in moves if m.kind == "promote"):
        version = client.get_model_version(name, str(move.to_version))
        assert move.run_id == version.run_id and move.metric == "val_accuracy"
        assert f"{move.candidate_score:.6f}" == version.tags["val_accuracy"]
        assert "beats" in move.reason or "no champion" in move.reason
    assert (
        moves[5].champion_score is not None and moves[5].champion_score < moves[5].candidate_score
    )
    assert [v.version for v in champion_chain(client, name, "champion")] in (["4", "1"], [4, 1])

    # A move by hand (the MLflow UI) is noticed by the next rollback, which undoes it first.
    client.set_registered_model_alias(name, "champion", "2")
    undo_manual = rollback(open_stage(runs["weak"]))
    assert (undo_manual["from_version"], undo_manual["to_version"]) == (2, 4) and champion() == 4
    assert rollback(open_stage(runs["weak"]))["to_version"] == 1 and champion() == 1
    with pytest.raises(RegistryError, match=r"^fashion-mnist-cnn version 1 was the first @champ"):
        rollback(open_stage(runs["weak"]))
    assert champion() == 1
    moves = history.read(client, name, "champion")
    assert _walk(moves)[6:] == [
        (7, "manual", 4, 2, None),
        (8, "rollback", 2, 4, 7),
        (9, "rollback", 4, 1, 6),
    ]

    # Housekeeping never loses it: the history lives on the registered model, not in runs.
    clean_runs(uri, name, "champion", tmp_path / "no-backups", dvc=False)
    assert history.read(client, name, "champion") == moves

    # make champion-history: a table of the nine moves, oldest first.
    history_cli = ("src/champion_history.py", "+experiment=smoke", f"mlflow.tracking_uri={uri}")
    shown = sh(ROOT, sys.executable, *history_cli)
    lines = shown.stdout.strip().splitlines()
    assert lines[0] == "fashion-mnist-cnn@champion: 9 moves, now v1"
    rows = [line.split()[:5] for line in lines[2:]]
    assert [r[0] for r in rows] == [str(n) for n in range(1, 10)]
    assert [r[2:5] for r in rows][:4] == [
        ["promote", "-", "v1"],
        ["promote", "v1", "v2"],
        ["promote", "v2", "v3"],
        ["rollback", "v3", "v2"],
    ]
    print(shown.stdout)
