"""Housekeeping: deleted runs and stale backups go, the champion and its run stay."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from fmnist_mlops.experiments.housekeeping import clean_runs
from fmnist_mlops.registry.promotion import promote
from fmnist_mlops.runtime import owner
from fmnist_mlops.tracking.context import open_stage
from fmnist_mlops.train.backup import CLAIM_FILE


@pytest.mark.integration
def test_clean_runs_collects_garbage_but_never_the_champion(trained_runs, tmp_path):
    champion_cfg, other_cfg = trained_runs["weak"], trained_runs["other"]
    uri = champion_cfg.mlflow.tracking_uri
    assert promote(open_stage(champion_cfg))["promote"]
    client = MlflowClient(uri, registry_uri=uri)
    champ_run = client.get_model_version_by_alias("fashion-mnist-cnn", "champion").run_id
    other_run = json.loads((Path(other_cfg.paths.out) / "models/run.json").read_text())["run_id"]
    assert other_run != champ_run and other_cfg
    other_artifacts = client.get_run(other_run).info.artifact_uri.removeprefix("file://")
    experiment_id = client.get_run(other_run).info.experiment_id
    [other_model] = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{other_run}'"
    )
    # A registered version that never became champion: its run must survive too.
    registered_cfg = trained_runs["strong"]
    registered_cfg.registry.min_delta = 1.0
    registered_run = promote(open_stage(registered_cfg))["run_id"]

    client.delete_run(other_run)
    client.delete_run(champ_run)  # a careless user: gc must not destroy the champion
    client.delete_run(registered_run)

    backups = tmp_path / ".backups"
    finished = backups / "train-pipeline"
    killed = backups / "train-adhoc"
    for folder, run in ((finished, other_run), (killed, None)):
        folder.mkdir(parents=True)
        if run is None:
            mlflow.set_tracking_uri(uri)
            run = client.create_run(client.get_run(champ_run).info.experiment_id).info.run_id
            client.set_terminated(run, "KILLED")
        (folder / "state.json").write_text(json.dumps({"run_id": run}))
    # A live training's backup (owned by this process) whose run looks finished: kept.
    live = backups / "train-live"
    live.mkdir()
    (live / "state.json").write_text(json.dumps({"run_id": other_run}))
    (live / CLAIM_FILE).write_text(json.dumps({"owner": owner.current()}))

    result = clean_runs(uri, "fashion-mnist-cnn", "champion", backups, dvc=False)
    assert result["protected_run"] == champ_run
    assert set(result["protected_runs"]) == {champ_run, registered_run}
    assert client.get_run(registered_run).info.lifecycle_stage == "active"
    # The collected run's logged model (MLflow 3) goes with it.
    assert result["gc_logged_models"] == [other_model.model_id]
    assert not client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{other_run}'"
    )
    model_dir = other_model.artifact_location.removeprefix("file://")
    assert not Path(model_dir).exists(), model_dir
    assert result["gc_runs"] and champ_run not in result["gc_runs"]
    assert client.get_run(champ_run).info.lifecycle_stage == "active"
    assert client.list_artifacts(champ_run, "checkpoints")
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_run(other_run)
    assert not Path(other_artifacts).exists(), "artifacts of the collected run are gone"
    assert result["removed_backups"] == [str(finished)] and killed.exists() and live.exists()
    loaded = mlflow.pyfunc.load_model("models:/fashion-mnist-cnn@champion")
    assert loaded is not None
