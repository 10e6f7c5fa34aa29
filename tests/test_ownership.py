"""Run ownership with real processes and signals: live runs are never resumed or shared."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_MODEL
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # several real training processes at once

EPOCHS = 10


class Training:
    """A real `python src/train.py` on the smoke split, its output in files."""

    def __init__(
        self, tmp_path: Path, prepared: Path, root: Path, env, *args: str, epochs: int = 0
    ):
        self.db = tmp_path / "mlflow.db"
        self.log = tmp_path / f"train-{time.monotonic_ns()}.err"
        cmd = [
            sys.executable,
            "src/train.py",
            "+experiment=smoke",
            "train.verbose=0",
            f"train.epochs={epochs}",
            f"train.patience={epochs}",
            # 128 steps an epoch: a run is still at its first epochs when the test freezes it.
            "train.batch_size=4",
            *TINY_MODEL,  # what is tested is who owns a run, not the network
            f"paths.prepared={prepared}",
            f"paths.scratch={tmp_path / 'scratch'}",
            f"mlflow.tracking_uri=sqlite:///{self.db}",
            *args,
        ]
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True
            )

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    def run_id(self, rows) -> str | None:
        found = rows(
            self.db,
            "select t.run_uuid from tags t join metrics m on m.run_uuid = t.run_uuid "
            f"where t.key = 'pid' and t.value = '{self.proc.pid}' and m.key = 'val_loss'",
        )
        return found[0][0] if found else None

    def wait_for_epoch(self, rows, timeout: float = 240) -> str:
        """The run this process writes, once it has logged an epoch."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run_id = self.run_id(rows)
            if run_id:
                return run_id
            if self.proc.poll() is not None:
                pytest.fail(f"training ended early: {self.stderr[-2000:]}")
            time.sleep(0.3)
        self.proc.kill()
        pytest.fail("training never logged an epoch")

    def wait_for_text(self, text: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and text not in self.stderr:
            if self.proc.poll() is not None:
                break
            time.sleep(0.3)
        assert text in self.stderr, self.stderr[-2000:]

    def pause(self) -> None:
        """Freeze the process (SIGSTOP) so it stays live however slow the machine is.

        Never frozen inside a store transaction: if the store cannot be locked exclusively
        right after the stop, the process runs on for a moment and is stopped again.
        """
        assert self.proc.poll() is None, f"training ended early: {self.stderr[-2000:]}"
        for _ in range(100):
            self.proc.send_signal(signal.SIGSTOP)
            try:
                with sqlite3.connect(self.db, timeout=0.5, isolation_level=None) as db:
                    db.execute("BEGIN EXCLUSIVE")
                    db.execute("ROLLBACK")
                return
            except sqlite3.OperationalError:
                self.proc.send_signal(signal.SIGCONT)
                time.sleep(0.05)
        pytest.fail("the store stayed locked by the training process")

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def interrupt(self, sig: signal.Signals) -> None:
        """Deliver ``sig`` to a paused process (it acts on it once continued)."""
        self.proc.send_signal(sig)
        self.resume()

    def finish(self, timeout: float = 900) -> int:
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def start(tmp_path, smoke_prepared, project_root, subprocess_env):
    started: list[Training] = []

    def _start(*args: str, epochs: int = EPOCHS) -> Training:
        t = Training(tmp_path, smoke_prepared, project_root, subprocess_env, *args, epochs=epochs)
        started.append(t)
        return t

    yield _start
    for t in started:
        if t.proc.poll() is None:
            t.proc.kill()  # SIGKILL ends a stopped process too
            t.proc.wait()


def store(tmp_path) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def assert_one_writer_per_run(client: MlflowClient, run_id: str, epochs: int) -> None:
    """Every epoch logged exactly once: no second process ever wrote into this run."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(epochs)), (run_id, key, steps)


def test_the_same_command_resumes_the_dead_run_never_a_live_one(start, tmp_path, read_only_rows_fn):
    rows = read_only_rows_fn
    # Each run is frozen once it has logged an epoch: live for as long as the test needs,
    # with no race against its own end on a slow machine.
    first = start("seed=1")
    killed = first.wait_for_epoch(rows)
    first.pause()
    same = start("seed=1")  # same settings, started while the first one is live
    live = same.wait_for_epoch(rows)
    same.pause()
    other = start("seed=2")  # other settings
    other_run = other.wait_for_epoch(rows)
    other.pause()
    assert len({killed, live, other_run}) == 3
    assert f"run {killed} with these settings is live" in same.stderr

    first.interrupt(signal.SIGINT)
    assert first.finish(timeout=120) == 128 + signal.SIGINT, first.stderr[-2000:]
    client = store(tmp_path)
    assert client.get_run(killed).info.status == "KILLED"

    rerun = start("seed=1")
    rerun.wait_for_text(f"resuming run {killed}")
    assert same.proc.poll() is None and other.proc.poll() is None, "both still live"
    same.resume()
    other.resume()
    for t in (rerun, same, other):
        assert t.finish() == 0, t.stderr[-2000:]
    for run_id in (killed, live, other_run):
        assert_one_writer_per_run(client, run_id, EPOCHS)
    experiment = client.get_experiment_by_name("fashion-mnist")
    assert len(client.search_runs([experiment.experiment_id])) == 3, "no extra run"
    assert not list((tmp_path / ".backups").glob("train-*")), "finished runs leave no backup"


def test_a_live_runs_explicit_output_folder_is_refused_then_resumed_once_it_is_dead(
    start, tmp_path, read_only_rows_fn
):
    rows = read_only_rows_fn
    out = tmp_path / "shared-out"
    first = start(f"paths.out={out}")
    run_id = first.wait_for_epoch(rows)
    first.pause()

    second = start(f"paths.out={out}", "seed=7")  # other settings, same folder
    assert second.finish(timeout=300) == 2
    said = second.stderr.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("train: error: paths.out="), said
    errors = said
    assert f"pid {first.proc.pid}" in errors[0] and "Traceback" not in second.stderr
    client = store(tmp_path)
    experiment = client.get_experiment_by_name("fashion-mnist")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]

    first.interrupt(signal.SIGTERM)
    assert first.finish(timeout=120) == 128 + signal.SIGTERM
    again = start(f"paths.out={out}")
    assert again.finish() == 0, again.stderr[-2000:]
    assert f"resuming run {run_id}" in again.stderr
    assert_one_writer_per_run(client, run_id, EPOCHS)
    assert (out / "models" / "model.keras").is_file()
