"""Faults with real processes and signals: no run left RUNNING, nothing registered."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import mlflow
import pytest
from helpers import ROOT, smoke_config, start_training, train, venv_env
from mlflow.tracking import MlflowClient

from fmnist_mlops.runtime import errors, owner
from fmnist_mlops.runtime.errors import TrainingDiverged
from fmnist_mlops.tracking.context import open_stage
from fmnist_mlops.tracking.runs import mark_orphaned_runs, reopen
from fmnist_mlops.tracking.tags import run_tags


def only_run(uri: str):
    # registry_uri too: without it the client asks whatever registry an earlier test set.
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("fashion-mnist")
    [run] = client.search_runs([exp.experiment_id])
    return client, run


@pytest.mark.integration
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_training_marks_run_killed(tmp_path, smoke_prepared, sig, code):
    proc, uri = start_training(tmp_path, smoke_prepared)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert f"interrupted by {signal.Signals(sig).name}; nothing was registered" in stderr
    client, run = only_run(uri)
    assert run.info.status == "KILLED"
    assert client.search_registered_models() == []


@pytest.mark.integration
def test_sigkilled_run_is_marked_killed_by_the_next_start(tmp_path, smoke_prepared):
    proc, uri = start_training(tmp_path, smoke_prepared)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    client, run = only_run(uri)
    assert run.info.status == "RUNNING", "SIGKILL cannot be caught: the run stays RUNNING"

    # Another machine's RUNNING run, and a live one of ours, must be left alone.
    mlflow.set_tracking_uri(uri)
    exp_id = run.info.experiment_id
    other = client.create_run(
        exp_id, tags={"host": "some-other-host", "pid": "1", "process_start": "0"}
    )
    live = client.create_run(exp_id, tags=run_tags("train"))
    assert live.data.tags["host"] == socket.gethostname()

    marked = mark_orphaned_runs(exp_id)
    assert marked == [run.info.run_id]
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert "is gone" in client.get_run(run.info.run_id).data.tags["killed_reason"]
    assert client.get_run(other.info.run_id).info.status == "RUNNING"
    assert client.get_run(live.info.run_id).info.status == "RUNNING"
    client.set_terminated(live.info.run_id)
    client.set_terminated(other.info.run_id)


@pytest.mark.integration
def test_nan_loss_fails_the_run_with_a_clear_message(tmp_path, smoke_prepared):
    cfg = smoke_config(tmp_path, smoke_prepared, "train.lr=1e8")
    with pytest.raises(
        TrainingDiverged, match=r"loss became (nan|inf) at epoch 0 .* train.lr=100000000.0"
    ):
        train(open_stage(cfg))
    _, run = only_run(cfg.mlflow.tracking_uri)
    assert run.info.status == "FAILED"
    assert re.search("loss became (nan|inf)", run.data.tags["failure"])


@pytest.mark.integration
def test_nan_loss_exits_non_zero_from_the_command_line(tmp_path, smoke_prepared):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = subprocess.run(
        [
            sys.executable,
            "src/train.py",
            "+experiment=smoke",
            "train.lr=1e8",
            f"paths.prepared={smoke_prepared}",
            f"paths.scratch={tmp_path / 'scratch'}",
            f"mlflow.tracking_uri={uri}",
        ],
        cwd=ROOT,
        env=venv_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2
    [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("train: error:")]
    assert re.search("loss became (nan|inf)", line) and "marked FAILED" in line
    assert os.path.exists(tmp_path / "mlflow.db")


@pytest.mark.integration
def test_a_signal_whose_raise_was_lost_still_stops_training(tmp_path, smoke_prepared, monkeypatch):
    # The handler raises at once, but that raise can land in library code that drops it; the
    # noted signal must still end training at the next batch, with the run KILLED.
    monkeypatch.setattr(errors, "_received", [])
    cfg = smoke_config(tmp_path, smoke_prepared)
    errors.note_signal(signal.SIGINT)
    with pytest.raises(errors.Interrupted, match="interrupted by SIGINT"):
        train(open_stage(cfg))
    client, run = only_run(cfg.mlflow.tracking_uri)
    assert run.info.status == "KILLED"
    assert client.search_registered_models() == []


def test_a_signal_inside_a_store_call_is_held_back_until_the_call_returns():
    """A raise inside SQLAlchemy can leave a SQLite transaction open: the run could not be
    marked KILLED ("database is locked"). Such a signal is noted and raised at the next check."""
    import sys

    from fmnist_mlops.runtime import cli, errors

    store_code = {"__name__": "sqlalchemy.engine.example"}
    exec("import sys\ndef call(fn):\n    return fn(sys._getframe())\n", store_code)
    errors._received.clear()
    try:
        store_code["call"](lambda frame: cli._raise_interrupted(15, frame))  # no raise here
        assert errors._received == [15]
        with pytest.raises(errors.Interrupted):
            errors.raise_if_interrupted()
        with pytest.raises(errors.Interrupted):  # anywhere else: at once
            cli._raise_interrupted(2, sys._getframe())
    finally:
        errors._received.clear()


def dead_owner() -> dict[str, str]:
    """Owner tags (host, pid, start time) naming a process of this host that has ended."""
    proc = subprocess.Popen(["sleep", "60"])
    started = owner.process_start(proc.pid)
    proc.kill()
    proc.wait()
    return {"host": socket.gethostname(), "pid": str(proc.pid), "process_start": f"{started:.3f}"}


def test_a_resumed_run_has_its_new_owner_before_it_is_running_again(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp_id = client.create_experiment("fashion-mnist")
    run_id = client.create_run(exp_id, tags=dead_owner()).info.run_id
    client.set_terminated(run_id, status="KILLED")  # an interrupted training's run

    with reopen(run_id, {"resumed_after_epoch": "3"}):
        # A training starting now on this host sweeps orphans: this run is not one.
        assert mark_orphaned_runs(exp_id) == []
        now = client.get_run(run_id)
        assert now.info.status == "RUNNING" and now.data.tags["pid"] == str(os.getpid())
        assert now.data.tags["resumed_after_epoch"] == "3"
    assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.integration
def test_evaluating_a_finished_run_never_lets_it_look_orphaned(champion, smoke_prepared, tmp_path):
    """`evaluate` adds to the training's run long after the training process ended; a training
    starting meanwhile (a queued experiment) sweeps orphans the whole time and must find none."""
    uri = champion.mlflow.tracking_uri
    mlflow.set_tracking_uri(uri)
    client, run = only_run(uri)
    run_id, exp_id = run.info.run_id, run.info.experiment_id
    for key, value in dead_owner().items():  # as after a `dvc repro` train stage
        client.set_tag(run_id, key, value)

    proc = subprocess.Popen(
        [
            sys.executable,
            "src/evaluate.py",
            "+experiment=smoke",
            f"paths.prepared={smoke_prepared}",
            f"paths.out={tmp_path / 'evaluated'}",
            f"mlflow.tracking_uri={uri}",
            f"run_id={run_id}",
        ],
        cwd=ROOT,
        env=venv_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    marked, deadline = [], time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        marked += mark_orphaned_runs(exp_id)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert marked == []
    after = client.get_run(run_id)
    assert after.info.status == "FINISHED" and "killed_reason" not in after.data.tags
    assert after.data.metrics["test_accuracy"] > 0
