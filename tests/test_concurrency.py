"""Many writers on the default SQLite store: nothing is lost (slow: real processes and writes)."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
STEPS = 500  # per writer: 10 writers contend for the database lock thousands of times


def _as_outside_pytest() -> None:
    # MLflow adds a test-only check to its SQLite sessions while PYTEST_CURRENT_TEST is set,
    # which these spawned writers inherit; a user's processes never have it.
    os.environ.pop("PYTEST_CURRENT_TEST", None)


def metric_writer(uri: str, run_id: str, i: int) -> None:
    _as_outside_pytest()
    client = MlflowClient(uri)
    for step in range(STEPS):
        client.log_metric(run_id, f"m{i}", float(step), step=step)


def batch_writer(uri: str, run_id: str, i: int) -> None:
    _as_outside_pytest()
    client = MlflowClient(uri)
    for b in range(STEPS // 100):
        metrics = [Metric(f"b{i}", float(s), 0, b * 100 + s) for s in range(100)]
        client.log_batch(run_id, metrics=metrics)


def test_eight_processes_and_batches_lose_no_metric(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("concurrency")).info.run_id
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=metric_writer, args=(uri, run_id, i)) for i in range(8)]
    procs += [ctx.Process(target=batch_writer, args=(uri, run_id, i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert [p.exitcode for p in procs] == [0] * 10
    for i in range(8):
        steps = sorted(m.step for m in client.get_metric_history(run_id, f"m{i}"))
        assert steps == list(range(STEPS)), f"m{i}"
    for i in range(2):
        assert sorted(m.step for m in client.get_metric_history(run_id, f"b{i}")) == list(
            range(STEPS)
        )


def store_opener(uri: str, barrier) -> None:
    _as_outside_pytest()
    from fmnist_mlops.config.compose import compose, validate
    from fmnist_mlops.tracking import store

    overrides = [f"mlflow.tracking_uri={uri}", "mlflow.experiment=fresh"]
    settings = validate(compose(overrides)).mlflow
    barrier.wait(timeout=120)
    store.setup(settings)


def test_processes_opening_a_fresh_store_at_once_all_succeed(tmp_path):
    # Two queued experiments or two workers on a fresh clone: each opening creates the tables
    # and runs MLflow's migrations, which fail when two do it at the same moment.
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=store_opener, args=(uri, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len(MlflowClient(uri).search_experiments(filter_string="name = 'fresh'")) == 1
