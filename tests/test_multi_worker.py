"""``train.distribute=multi_worker``: N real worker processes on loopback train one tracked run."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import ROOT, training_metric_keys
from mlflow.tracking import MlflowClient

from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.train.cluster import Role, role
from fmnist_mlops.train.launch import free_ports, tf_configs

PUBLISHED = {"models/model.keras", "models/run.json", "reports/history.csv", "reports/history.png"}


def smoke_args(tmp_path: Path, prepared: Path, *extra: str) -> list[str]:
    return [
        "+experiment=smoke",
        "train.verbose=0",
        f"paths.prepared={prepared}",
        f"paths.scratch={tmp_path / 'scratch'}",
        f"paths.out={tmp_path / 'out'}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
    ]


def results(*texts: str) -> list[dict]:
    """The JSON result lines (one per worker) in the given outputs."""
    return [json.loads(line) for t in texts for line in t.splitlines() if line.startswith("{")]


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


# --- the role each process reads from TF_CONFIG (no TensorFlow) ---


def test_roles_come_from_tf_config():
    two = tf_configs(["127.0.0.1:1", "127.0.0.1:2"])
    assert role("multi_worker", {"TF_CONFIG": two[0]}) == Role(0, 2, True)
    assert role("multi_worker", {"TF_CONFIG": two[1]}) == Role(1, 2, False)
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:1"]}}
    as_worker = json.dumps({**with_chief, "task": {"type": "worker", "index": 0}})
    assert role("multi_worker", {"TF_CONFIG": as_worker}) == Role(1, 2, False)
    for other in ("none", "mirrored"):
        assert role(other, {"TF_CONFIG": two[1]}) == Role(), (
            "TF_CONFIG only counts for multi_worker"
        )


@pytest.mark.parametrize(
    "tf_config",
    [
        "",
        "not json",
        '{"cluster": {"worker": ["a:1"]}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}',
    ],
)
def test_an_unusable_tf_config_is_refused_naming_it(tf_config):
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        role("multi_worker", {"TF_CONFIG": tf_config})


def test_multi_worker_without_tf_config_is_one_line_and_exit_2(
    tmp_path, smoke_prepared, project_root, subprocess_env
):
    subprocess_env.pop("TF_CONFIG", None)
    cmd = [sys.executable, "src/train.py", *smoke_args(tmp_path, smoke_prepared)]
    result = subprocess.run(
        [*cmd, "train.distribute=multi_worker"],
        cwd=project_root,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs TF_CONFIG" in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


def test_the_launcher_refuses_fewer_than_two_workers(project_root, subprocess_env):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "train_workers.py"),
            "-n",
            "1",
            "--",
            "+experiment=smoke",
        ],
        cwd=project_root,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "train-workers: error: N=1: a multi-worker training needs N >= 2 workers"
    ]


# --- real workers ---


@pytest.mark.slow
def test_two_workers_started_by_hand_train_one_tracked_run(
    tmp_path, smoke_prepared, project_root, subprocess_env
):
    # As the README documents: the same command on every worker, only TF_CONFIG differs.
    args = smoke_args(tmp_path, smoke_prepared, "train.distribute=multi_worker", "train.epochs=3")
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    temp = tmp_path / "tmp"
    temp.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "src/train.py", *args],
            cwd=project_root,
            env={**subprocess_env, "TF_CONFIG": tf_config, "TMPDIR": str(temp)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tf_config in tf_configs(hosts)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    chief, peer = (results(out)[0] for out, _ in outputs)
    assert chief["weights_sha256"] == peer["weights_sha256"], "same restored best weights"
    assert chief["best_epoch"] == peer["best_epoch"]
    assert "MLflow run" not in outputs[1][1], "the peer opened no run"
    assert not list(temp.iterdir()), "the peer's temporary checkpoint folder is gone"

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    assert [r.info.run_id for r in runs] == [chief["run_id"]], "exactly one run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["distribute.workers"] == "2"
    assert run.data.tags["distribute.replicas"] == "2"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == list(range(chief["epochs_trained"])), key
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"checkpoints", "plots"} <= artifacts
    assert files_under(tmp_path / "out") == PUBLISHED, "only the chief's outputs"

    # The same metric keys as a single-process run of the same settings.
    single = tmp_path / "single"
    # A sampling interval shorter than any training, so this run surely has system metrics.
    sampled = {**subprocess_env, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"}
    one = subprocess.run(
        [sys.executable, "src/train.py", *smoke_args(single, smoke_prepared, "train.epochs=3")],
        cwd=project_root,
        env=sampled,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    single_uri = f"sqlite:///{single / 'mlflow.db'}"
    single_run = MlflowClient(single_uri).get_run(results(one.stdout)[0]["run_id"])
    assert training_metric_keys(run) == training_metric_keys(single_run)
    assert "system/cpu_utilization_percentage" in single_run.data.metrics
    assert set(run.data.params) == set(single_run.data.params)

    evaluate = subprocess.run(
        [sys.executable, "src/evaluate.py", *args],
        cwd=project_root,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    versions = client.search_model_versions("name = 'fashion-mnist-cnn'")
    assert [v.run_id for v in versions] == [chief["run_id"]], "exactly one version registered"


def _worker_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """Worker index -> pid, read from the launcher's children's TF_CONFIG."""
    found = {}
    for child in psutil.Process(launcher.pid).children():
        try:
            tf_config = json.loads(child.environ().get("TF_CONFIG", "{}"))
        except psutil.Error:
            continue
        if "task" in tf_config:
            found[tf_config["task"]["index"]] = child.pid
    return found


@pytest.mark.slow
def test_a_killed_worker_ends_every_process_and_the_same_command_resumes(
    tmp_path, smoke_prepared, project_root, subprocess_env, read_only_rows_fn
):
    epochs = 5
    extra = (f"train.epochs={epochs}", f"train.patience={epochs}", "train.batch_size=8")
    cmd = [sys.executable, str(ROOT / "src" / "train_workers.py"), "-n", "2", "--"]
    cmd += smoke_args(tmp_path, smoke_prepared, *extra)

    def launch(name: str) -> subprocess.Popen:
        err = (tmp_path / f"{name}.err").open("w")
        out = (tmp_path / f"{name}.out").open("w")
        # The SIGKILLed worker cannot remove its temporary checkpoint folder: keep it in here.
        env = {**subprocess_env, "TMPDIR": str(tmp_path)}
        return subprocess.Popen(cmd, cwd=project_root, env=env, stdout=out, stderr=err)

    first = launch("first")
    db = tmp_path / "mlflow.db"
    deadline = time.monotonic() + 300
    while not read_only_rows_fn(db, "select 1 from metrics where key = 'val_loss'"):
        assert first.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "no epoch logged"
        time.sleep(0.2)
    workers = _worker_pids(first)
    assert sorted(workers) == [0, 1]
    chief = psutil.Process(workers[0])
    killed_at = time.monotonic()
    psutil.Process(workers[1]).send_signal(signal.SIGKILL)  # mid-epoch: no chance to clean up

    first.wait(timeout=120)
    chief.wait(timeout=max(1.0, 120 - (time.monotonic() - killed_at)))
    ended_after = time.monotonic() - killed_at
    assert ended_after < 120, ended_after
    assert first.returncode == 75, (tmp_path / "first.err").read_text()[-3000:]
    assert "a peer worker was lost" in (tmp_path / "first.err").read_text()
    uri = f"sqlite:///{db}"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fashion-mnist").experiment_id])
    assert run.info.status == "KILLED"

    again = launch("again")
    assert again.wait(timeout=900) == 0, (tmp_path / "again.err").read_text()[-3000:]
    said = (tmp_path / "again.err").read_text()
    assert f"resuming run {run.info.run_id}" in said
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    for key in ("loss", "val_loss"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps == list(range(epochs)), (key, steps)
    outs = results((tmp_path / "again.out").read_text(), said)
    assert len(outs) == 2 and outs[0]["weights_sha256"] == outs[1]["weights_sha256"]
    assert len(client.search_runs([run.info.experiment_id])) == 1, "no second run"


@pytest.mark.slow
def test_a_chief_that_stops_on_bad_input_does_not_leave_the_other_worker_waiting(
    tmp_path, smoke_prepared, project_root, subprocess_env
):
    unreachable = "mlflow.tracking_uri=postgresql://nobody@127.0.0.1:1/none"  # nothing listens
    args = smoke_args(tmp_path, smoke_prepared, "train.distribute=multi_worker", unreachable)
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "src/train.py", *args],
            cwd=project_root,
            env={**subprocess_env, "TF_CONFIG": tf_config},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tf_config in tf_configs(hosts)
    ]
    (_, chief_err), (_, peer_err) = (p.communicate(timeout=300) for p in procs)
    assert procs[0].returncode == 2, chief_err[-2000:]
    assert "cannot be reached" in chief_err
    assert procs[1].returncode == 75, peer_err[-2000:]
    assert "a peer worker was lost" in peer_err
    assert time.monotonic() - started < 180


def test_make_train_workers_runs_the_launcher_with_n_and_args(project_root, subprocess_env):
    # Under `make test` this is a sub-make: without the parent's flags it prints no
    # "Entering/Leaving directory" lines and runs nothing of the parent's.
    env = {k: v for k, v in subprocess_env.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(
        [
            "make",
            "-n",
            "--no-print-directory",
            "train-workers",
            "N=3",
            "ARGS=+experiment=smoke seed=4",
        ],
        cwd=project_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    wanted = "python src/train_workers.py -n 3 -- +experiment=smoke seed=4"
    assert any(line.endswith(wanted) for line in result.stdout.splitlines()), result.stdout


def test_the_launcher_prepares_another_split_beside_dvcs_never_over_it(
    tmp_path, smoke_prepared, project_root, monkeypatch
):
    """`make train-workers ARGS=...` after `make repro`: data/prepared (DVC's output) holds
    another split than ARGS ask for; the launcher prepares theirs into scratch instead."""
    import shutil

    from fmnist_mlops.train.launch import with_prepared_split

    project = tmp_path / "project"
    shutil.copytree(smoke_prepared, project / "data" / "prepared")  # DVC's: the smoke split
    (project / "dvc.yaml").write_text("stages: {}\n")
    shutil.copytree(project_root / "conf", project / "conf")
    monkeypatch.chdir(project)
    dvc_files = {p.name: p.read_bytes() for p in (project / "data" / "prepared").iterdir()}
    args = ["+experiment=smoke", "data.max_train=256", f"paths.scratch={tmp_path / 'scratch'}"]

    got = with_prepared_split(args)
    assert got[:-1] == args and got[-1].startswith(f"paths.prepared={tmp_path / 'scratch'}")
    own = Path(got[-1].split("=", 1)[1])
    assert json.loads((own / "meta.json").read_text())["counts"]["train"] == 256
    assert {p.name: p.read_bytes() for p in (project / "data" / "prepared").iterdir()} == dvc_files
    made = (own / "meta.json").stat().st_mtime_ns
    assert with_prepared_split(args) == got and (own / "meta.json").stat().st_mtime_ns == made

    # A split that fits is used where it is; a folder the user names is never replaced.
    assert with_prepared_split(args[:1]) == args[:1]
    named = [*args, f"paths.prepared={project / 'data' / 'prepared'}"]
    assert with_prepared_split(named) == named


@pytest.mark.slow
def test_workers_started_with_different_settings_stop_in_one_line_before_any_run(
    tmp_path, smoke_prepared, project_root, subprocess_env
):
    """Each worker compares its settings with the others' when they join: a mismatch ends
    every worker in one line naming the keys, exit 2, before the chief opens a run."""
    common = smoke_args(tmp_path, smoke_prepared, "train.distribute=multi_worker")
    own = [["model.filters=[8]", "train.epochs=2"], ["model.filters=[16]", "train.epochs=3"]]
    hosts = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "src/train.py", *common, *extra],
            cwd=project_root,
            env={**subprocess_env, "TF_CONFIG": tf_config},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tf_config, extra in zip(tf_configs(hosts), own, strict=True)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-3000:]
        said = err.strip().splitlines()
        assert len(said) == 1 and said[0].startswith("train: error: the 2 workers were started"), (
            said
        )
        assert "model.filters: worker 0 [8] / worker 1 [16]" in said[0], said[0]
        assert "train.epochs: worker 0 2 / worker 1 3" in said[0], said[0]
        assert "Traceback" not in err
    runs = (
        sqlite3.connect(tmp_path / "mlflow.db").execute("select count(*) from runs").fetchone()[0]
        if (tmp_path / "mlflow.db").exists()
        else 0
    )
    assert runs == 0, "no run created"
