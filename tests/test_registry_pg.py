"""Promotion lock on PostgreSQL (machines sharing one tracking server), with a real server."""

from __future__ import annotations

import time

import pytest
from helpers import free_port, race_promotions, start_register
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from fmnist_mlops.registry.promotion import promote
from fmnist_mlops.registry.rule import registry_lock
from fmnist_mlops.runtime.errors import RegistryError
from fmnist_mlops.tracking.context import open_stage

pytestmark = pytest.mark.integration


def test_advisory_lock_holds_back_a_promotion_until_released(
    trained_runs, smoke_prepared, postgres
):
    cfg = trained_runs["weak"]
    uri = cfg.mlflow.tracking_uri
    with registry_lock("fashion-mnist-cnn", postgres):  # another machine is promoting
        proc = start_register(cfg, smoke_prepared, uri, postgres)
        time.sleep(12)  # long enough to import TensorFlow, score, and reach the lock
        assert proc.poll() is None, "the promotion must wait for the lock"
        client = MlflowClient(uri, registry_uri=uri)
        assert client.search_model_versions("name='fashion-mnist-cnn'") == []
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert client.get_model_version_by_alias("fashion-mnist-cnn", "champion").version in (1, "1")


def test_two_machines_promoting_at_once_end_on_the_better_model(
    trained_runs, smoke_prepared, postgres
):
    _, champion, strong_run = race_promotions(trained_runs, smoke_prepared, lock_url=postgres)
    assert champion.run_id == strong_run


def test_unreachable_lock_database_is_a_clear_error_and_changes_nothing(trained_runs):
    cfg = trained_runs["weak"]
    uri = cfg.mlflow.tracking_uri
    with open_dict(cfg):
        cfg.registry.lock_url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/x"
    with pytest.raises(RegistryError, match=r"registry.lock_url: cannot reach") as err:
        promote(open_stage(cfg))
    assert "s3cret" not in str(err.value)
    assert (
        MlflowClient(uri, registry_uri=uri).search_model_versions("name='fashion-mnist-cnn'") == []
    )
