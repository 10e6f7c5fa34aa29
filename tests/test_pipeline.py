"""The real pipeline, driven by real DVC commands in a temporary copy of the project (slow)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import TINY_MODEL, client_for, dvc, load_script, sh, venv_env

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def runs(project: Path):
    client = client_for(project)
    exp = client.get_experiment_by_name("fashion-mnist")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_repro_tracks_everything_in_mlflow(smoke_project):
    project = smoke_project
    metrics = json.loads((project / "reports/metrics.json").read_text())
    [run] = runs(project)
    assert run.info.run_id == metrics["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["data.max_train"] == "512"
    # Keys left null are logged as the run used them (they follow train.patience, the metric).
    assert run.data.params["train.lr_plateau_patience"] == "1"
    assert run.data.params["registry.mode"] == "max"
    # What a rebuild needs (make reproduce): environment, machine, determinism, weights.
    tags = run.data.tags
    assert tags["train.op_determinism"] == "true" and len(tags["weights_sha256"]) == 64
    assert {"env.uv_lock_sha256", "env.packages_sha256", "host.cpu_flags_sha256"} <= set(tags)
    assert {f"data.split_sha256.{s}" for s in ("train", "val", "test")} <= set(tags)
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    client = client_for(project)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [0, 1]
    assert run.info.artifact_uri.startswith((project / "mlruns").as_uri())
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    promotion = json.loads((project / "reports/promotion.json").read_text())
    assert int(champion.version) == promotion["champion_after"] == 1
    assert champion.run_id == run.info.run_id
    for name in (
        "history.png",
        "confusion_matrix.png",
        "misclassified.png",
        "test_predictions.csv",
    ):
        assert (project / "reports" / name).stat().st_size > 0


def test_second_repro_runs_nothing(smoke_project):
    lock = (smoke_project / "dvc.lock").read_text()
    before = len(runs(smoke_project))
    out = dvc(smoke_project, "repro").stdout
    assert "Running stage" not in out
    assert (smoke_project / "dvc.lock").read_text() == lock
    assert len(runs(smoke_project)) == before


def test_failed_stage_leaves_lock_and_checkout_restores(smoke_project):
    project = smoke_project
    lock = (project / "dvc.lock").read_text()
    params = project / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("dropout: 0.4", "dropout: 1.5"))
    try:
        result = dvc(project, "repro", check=False)
        assert result.returncode != 0
        assert "train: error: model.dropout=1.5 is invalid" in result.stdout + result.stderr
        assert (project / "dvc.lock").read_text() == lock
    finally:
        params.write_text(original)
    dvc(project, "checkout")
    status = dvc(project, "status", "--json").stdout
    assert json.loads(status) == {}, status
    assert all(r.info.status == "FINISHED" for r in runs(project)), "no run left RUNNING"


def test_exp_run_set_param_reaches_the_code(smoke_project):
    project = smoke_project
    dvc(
        project,
        "exp",
        "run",
        "-S",
        "+experiment=smoke",
        "-S",
        "train.epochs=1",
        "-S",
        "model.filters=[16,32]",
    )
    metrics = json.loads((project / "reports/metrics.json").read_text())
    run = client_for(project).get_run(metrics["run_id"])
    # What DVC recorded is what ran.
    recorded = yaml.safe_load((project / "params.yaml").read_text())
    assert recorded["train"]["epochs"] == 1 and recorded["model"]["filters"] == [16, 32]
    assert run.data.params["train.epochs"] == "1" and run.data.params["model.filters"] == "[16, 32]"
    assert run.data.metrics["epochs_trained"] == 1
    assert run.data.tags.get("dvc_exp_name")
    show = json.loads(dvc(project, "exp", "show", "--json").stdout)
    text = json.dumps(show)
    assert metrics["run_id"] in text and "test_accuracy" in text


def test_make_repro_picks_up_a_conf_edit(smoke_project):
    """`make repro` recomposes params.yaml from conf/, so an edit there reaches the stages."""
    project = smoke_project
    venv = project / ".venv"
    venv.symlink_to(Path(sys.executable).parent.parent)  # reuse this interpreter's venv
    (venv / ".installed").touch(exist_ok=True)
    config = project / "conf" / "config.yaml"
    text = config.read_text()
    assert "  - mlflow: default\n" in text
    config.write_text(
        text.replace("  - mlflow: default\n", "  - mlflow: default\n  - experiment: smoke\n")
    )
    smoke = project / "conf" / "experiment" / "smoke.yaml"
    smoke.write_text(smoke.read_text().replace("  epochs: 2", "  epochs: 1"))
    sh(project, "make", "repro")
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"] == 1
    metrics = json.loads((project / "reports/metrics.json").read_text())
    run = client_for(project).get_run(metrics["run_id"])
    assert run.data.params["train.epochs"] == "1" and metrics["epochs_trained"] == 1


def test_temp_experiment_logs_to_the_repository_store(smoke_project):
    """`dvc exp run --temp` runs in .dvc/tmp/exps/..., which DVC deletes: the run must not."""
    project = smoke_project
    before = {r.info.run_id for r in runs(project)}
    dvc(
        project,
        "exp",
        "run",
        "--temp",
        "-S",
        "+experiment=smoke",
        "-S",
        "train.epochs=1",
        "-S",
        "seed=3",
    )
    new = [r for r in runs(project) if r.info.run_id not in before]
    assert len(new) == 1, "exactly one new run, in the repository's mlflow.db"
    run = new[0]
    assert run.data.params["seed"] == "3" and run.data.tags.get("dvc_exp_name")
    assert run.info.artifact_uri.startswith((project / "mlruns").as_uri())
    artifacts = client_for(project).list_artifacts(run.info.run_id, "plots")
    assert any(a.path == "plots/history.png" for a in artifacts)
    assert not list((project / ".dvc" / "tmp").glob("exps/*/mlflow.db"))


def _exp_show(project: Path) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: what DVC recorded for it}."""
    show = json.loads(dvc(project, "exp", "show", "--json").stdout)
    recorded = {}
    for baseline in show[1:]:
        for exp in baseline.get("experiments") or []:
            data = exp["revs"][0]["data"]
            recorded[exp["name"]] = {
                "baseline": baseline["rev"],
                "params": data["params"]["params.yaml"]["data"],
                "metrics": data["metrics"]["reports/metrics.json"]["data"],
            }
    return recorded


def run_queue(project: Path, jobs: int, timeout: float = 600) -> str:
    """`dvc queue start -j JOBS`, then wait until nothing is queued or running."""
    start_queue(project, jobs)
    status = wait_queue(project, timeout)
    assert status.count("Success") >= 2, status
    return status


def start_queue(project: Path, jobs: int) -> None:
    """`dvc queue start -j JOBS`, returning at once.

    Not through `dvc()`: the detached workers inherit captured pipes, and reading them to the
    end would wait for the whole queue.
    """
    subprocess.run(
        [str(BIN / "dvc"), "queue", "start", "-j", str(jobs)],
        cwd=project,
        env=venv_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=120,
    )


def wait_queue(project: Path, timeout: float) -> str:
    """Poll `dvc queue status` until nothing is queued or running; its last output.

    Then stop the queue's workers and wait until none is left: an idle worker lingers and
    would run whatever a later test queues (a test that queues an experiment and expects it to
    stay queued saw it start).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc(project, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    dvc(project, "queue", "stop")
    stop_deadline = time.monotonic() + 60
    while time.monotonic() < stop_deadline:
        stopped = "Worker status: 0 active, 0 idle" in dvc(project, "queue", "status").stdout
        # DVC stops counting a worker before its process is gone, and a worker on its way out
        # still takes a task queued meanwhile: wait for the processes themselves.
        if stopped and not _queue_workers(project):
            return status
        time.sleep(1)
    import psutil

    # Seen in CI: a worker of this project still alive minutes later ran the next test's task.
    leftovers = _queue_workers(project)
    for proc in leftovers:
        proc.terminate()
    for proc in psutil.wait_procs(leftovers, timeout=30)[1]:
        proc.kill()
    return status


def _queue_workers(project: Path) -> list:
    """The `dvc exp queue-worker` processes of ``project`` still alive."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, cwd = proc.info["cmdline"] or [], proc.info["cwd"] or ""
        if "queue-worker" in cmdline and cwd.startswith(str(project)):
            found.append(proc)
    return found


@pytest.mark.parametrize("recipe", ["fast", "best"])
def test_a_recipe_reaches_the_code_through_dvc_exp_run(smoke_project, recipe):
    """`dvc exp run -S '+experiment=<recipe>'` (shrunk here to the smoke split and one epoch)."""
    project = smoke_project
    best = yaml.safe_load((project / "conf" / "experiment" / f"{recipe}.yaml").read_text())
    shrink = ["data.max_train=512", "data.max_val=256", "data.max_test=256", "train.epochs=1"]
    dvc(
        project,
        "exp",
        "run",
        "-S",
        f"+experiment={recipe}",
        *(a for s in shrink for a in ("-S", s)),
    )
    recorded = yaml.safe_load((project / "params.yaml").read_text())
    metrics = json.loads((project / "reports/metrics.json").read_text())
    run = client_for(project).get_run(metrics["run_id"])
    model = next(v for d in best["defaults"] for k, v in d.items() if k == "override /model")
    assert recorded["model"]["name"] == run.data.params["model.name"] == model
    for key, value in best["train"].items():
        if key == "epochs":
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                assert recorded["train"][key][sub] == v
                assert run.data.params[f"train.{key}.{sub}"] == str(v)
        else:
            assert recorded["train"][key] == value
            assert run.data.params[f"train.{key}"] == str(value)
    assert metrics["epochs_trained"] == 1


def _training_process(name: str, timeout: float = 300):
    """The `python src/train.py` process of queued experiment ``name``, once it runs."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(a.endswith("src/train.py") for a in proc.info["cmdline"] or []) and (
                    proc.environ().get("DVC_EXP_NAME") == name
                ):
                    return proc
            except psutil.Error:
                continue
        time.sleep(0.5)
    raise AssertionError(f"experiment {name} never started training")


def test_three_queued_experiments_on_two_workers_one_interrupted(smoke_project, read_only_rows_fn):
    """`dvc exp run --queue` x3, `dvc queue start -j 2`, SIGINT to one experiment's training:
    two train at once, only the interrupted run ends KILLED, the others finish without touching
    each other's backups, each run is recorded once in the SQLite store, and the registry holds
    exactly the finished ones."""
    import signal

    project = smoke_project
    before = {r.info.run_id for r in runs(project)}
    names = [f"q3-{seed}" for seed in (41, 42, 43)]
    tiny = [a for override in TINY_MODEL for a in ("-S", override)]
    for name in names:
        # The first is interrupted after its first epoch: it must still be training then.
        epochs = 200 if name == names[0] else 6
        dvc(
            project,
            *("exp", "run", "--queue", "-n", name, "-S", "+experiment=smoke", *tiny),
            *("-S", f"seed={name[-2:]}", "-S", f"train.epochs={epochs}"),
            *("-S", f"train.patience={epochs}"),
        )
    start_queue(project, 2)
    victim = _training_process(names[0])
    db = project / "mlflow.db"
    query = (
        "SELECT DISTINCT t.value FROM metrics m JOIN tags t ON m.run_uuid = t.run_uuid "
        "WHERE t.key = 'dvc_exp_name' AND m.key = 'val_loss'"
    )
    # The victim is interrupted once it and a second experiment have each logged an epoch:
    # two are training at that moment, however slowly the second worker started.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        training = {row[0] for row in read_only_rows_fn(db, query)}
        if names[0] in training and len(training) >= 2:
            break
        time.sleep(0.5)
    victim.send_signal(signal.SIGINT)
    status = wait_queue(project, 900)
    assert status.count("Success") >= 2, status
    baseline = sh(project, "git", "rev-parse", "HEAD").stdout.strip()
    recorded = _exp_show(project)

    new = {r.data.tags["dvc_exp_name"]: r for r in runs(project) if r.info.run_id not in before}
    assert sorted(new) == names, "each experiment's run recorded exactly once"
    assert new[names[0]].info.status == "KILLED"
    client = client_for(project)
    for name in names[1:]:
        run = new[name]
        assert run.info.status == "FINISHED", name
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert steps == list(range(len(steps))), f"{name}: one writer, no repeated epoch"
        # What MLflow logged is what DVC recorded for the experiment.
        dvc_says = recorded[name]
        assert run.data.tags["dvc_baseline"] == dvc_says["baseline"] == baseline
        assert dvc_says["metrics"]["run_id"] == run.info.run_id
        for key in ("test_accuracy", "test_loss", "epochs_trained"):
            assert run.data.metrics[key] == pytest.approx(dvc_says["metrics"][key]), key
        assert run.data.metrics["eval_val_accuracy"] == pytest.approx(
            dvc_says["metrics"]["val_accuracy"]
        )
        for key in ("seed", "train.epochs", "model.filters", "data.max_train"):
            section, _, leaf = key.rpartition(".")
            value = dvc_says["params"][section][leaf] if section else dvc_says["params"][key]
            assert run.data.params[key] == str(value), key
    killed = new[names[0]].info
    assert any(
        killed.start_time < new[n].info.end_time and new[n].info.start_time < killed.end_time
        for n in names[1:]
    ), "two experiments trained at the same time"
    for name in names:
        logs = dvc(project, "queue", "logs", name, check=False).stdout
        assert "database is locked" not in logs, name
        assert "discarding backup" not in logs and "resuming" not in logs, name
    versions = client.search_model_versions("name='fashion-mnist-cnn'")
    registered = {v.run_id for v in versions}
    assert {new[n].info.run_id for n in names[1:]} <= registered
    assert new[names[0]].info.run_id not in registered, "the interrupted run registered nothing"
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert champion.version in {v.version for v in versions}

    # A finished experiment's params again: DVC restores every stage from its run cache; no new
    # MLflow run, and reports/metrics.json still names the run that produced the result.
    count = len(runs(project))
    out = dvc(
        project,
        *("exp", "run", "-S", "+experiment=smoke", *tiny, "-S", f"seed={names[1][-2:]}"),
        *("-S", "train.epochs=6", "-S", "train.patience=6"),
    ).stdout
    assert "Stage 'train' is cached - skipping run" in out
    assert len(runs(project)) == count
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["run_id"] == new[names[1]].info.run_id


def test_clean_runs_removes_old_experiments_and_keeps_the_champion(smoke_project):
    from fmnist_mlops.experiments.housekeeping import champion_chain
    from fmnist_mlops.registry import history

    project = smoke_project
    # Two experiments: 6 epochs beats the 2-epoch baseline champion (promoted, so a rollback
    # target to keep), 1 epoch does not (nothing refers to it: collected).
    for name, epochs in (("winner", 6), ("loser", 1)):
        dvc(
            project,
            *("exp", "run", "-n", name, "-S", "+experiment=smoke"),
            *("-S", f"train.epochs={epochs}", "-S", "train.patience=6"),
        )
    client = client_for(project)
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    chain = champion_chain(client, "fashion-mnist-cnn", "champion")
    assert chain[0].version == champion.version
    origins = {client.get_run(v.run_id).data.tags.get("dvc_exp_name") for v in chain} - {None}
    assert origins == {"winner"}, origins
    registered = {v.run_id for v in client.search_model_versions()}
    listed = dvc(project, "exp", "list", "--all-commits", "--name-only").stdout.split()
    assert {"winner", "loser"} <= set(listed), listed
    moves = history.read(client, "fashion-mnist-cnn", "champion")
    assert [m.kind for m in moves] == ["promote", "promote"], "the baseline, then the winner"
    # A queued experiment: DVC is left alone while it waits (nothing removed, still queued).
    dvc(project, "exp", "run", "--queue", "-n", "waiting", "-S", "seed=77")
    sh(project, sys.executable, "src/clean_runs.py")
    assert sorted(
        dvc(project, "exp", "list", "--all-commits", "--name-only").stdout.split()
    ) == sorted(listed)
    assert "Queued" in dvc(project, "queue", "status").stdout
    dvc(project, "queue", "remove", "waiting")
    sh(project, sys.executable, "src/clean_runs.py")
    left = dvc(project, "exp", "list", "--all-commits", "--name-only").stdout.split()
    assert set(left) == origins, "only the champions' experiments survive (rollback targets)"
    for run_id in registered:  # every registered version keeps its run
        assert client.get_run(run_id).info.lifecycle_stage == "active"
    again = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    assert again.version == champion.version
    assert client.get_run(again.run_id).info.lifecycle_stage == "active"
    assert history.read(client, "fashion-mnist-cnn", "champion") == moves, "history kept"
    assert "Running stage" not in dvc(project, "repro").stdout, "workspace data kept"


@pytest.mark.parametrize("how", ["SIGTERM to dvc", "Ctrl-C (SIGINT to the process group)"])
def test_interrupted_dvc_repro_kills_the_run_and_dvc_repro_resumes_it(smoke_project, how):
    """SIGTERM: DVC does not forward it; the stage notices its parent died. Ctrl-C: the
    terminal signals the whole group. Either way the run ends KILLED, and the next
    `dvc repro` continues the same run from its last finished epoch."""
    import os
    import signal
    import sqlite3

    project = smoke_project
    versions = len(client_for(project).search_model_versions("name='fashion-mnist-cnn'"))
    seed = 11 if how.startswith("SIGTERM") else 12  # a new config, so that dvc repro runs
    sh(
        project,
        sys.executable,
        "src/params.py",
        "+experiment=smoke",
        *TINY_MODEL,  # the network does not matter here: the interruption does
        "train.epochs=20",
        "train.patience=20",
        "train.batch_size=16",
        f"seed={seed}",
    )
    lock = (project / "dvc.lock").read_text()
    before = {r.info.run_id for r in runs(project)}
    proc = subprocess.Popen(
        [str(BIN / "dvc"), "repro"],
        cwd=project,
        env=venv_env(SHELL="/bin/sh"),  # dash stays between dvc and the stage
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with sqlite3.connect(project / "mlflow.db") as con:
            training = {
                row[0]
                for row in con.execute(
                    "select r.run_uuid from metrics m join runs r on m.run_uuid = r.run_uuid "
                    "where m.key = 'val_loss' and r.status = 'RUNNING'"
                )
            }
        if training - before:  # this reproduction's run has logged an epoch
            break
        time.sleep(0.3)
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    dvc_out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    killed = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and killed is None:
        new = [r for r in runs(project) if r.info.run_id not in before]
        if new and new[0].info.status == "KILLED":
            killed = new[0]
        time.sleep(0.5)
    statuses = [
        (r.info.run_id, r.info.status) for r in runs(project) if r.info.run_id not in before
    ]
    assert killed is not None, f"run must end KILLED: {statuses}\n{dvc_out[-3000:]}"
    assert (project / "dvc.lock").read_text() == lock
    assert len(client_for(project).search_model_versions("name='fashion-mnist-cnn'")) == versions

    out = dvc(project, "repro").stdout
    assert "Running stage 'train'" in out
    run = client_for(project).get_run(killed.info.run_id)
    assert run.info.status == "FINISHED" and "resumed_after_epoch" in run.data.tags
    steps = [m.step for m in client_for(project).get_metric_history(run.info.run_id, "val_loss")]
    assert steps == list(range(20))
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["run_id"] == killed.info.run_id


def test_a_second_dvc_repro_fails_cleanly_while_one_runs(smoke_project):

    project = smoke_project
    first = subprocess.Popen(
        [str(BIN / "dvc"), "repro", "-f", "train"],
        cwd=project,
        env=venv_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(3)  # DVC holds its repository lock for the whole reproduction
    second = dvc(project, "repro", check=False)
    assert second.returncode != 0
    assert "lock" in (second.stdout + second.stderr).lower()
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-2000:]


def test_dvc_plots_show_renders_offline(smoke_project, tmp_path):
    render_offline = load_script("tools/ui_check.py").render_offline

    dvc(smoke_project, "plots", "show", "-o", str(tmp_path / "plots"))
    page = tmp_path / "plots" / "index.html"
    html = page.read_text()
    # Nothing fetched from elsewhere: no CDN tag, every src/href is local.
    assert "cdn.jsdelivr" not in html
    links = re.findall(r'(?:src|href)\s*=\s*"([^"$]+)"', html)
    assert links and not [u for u in links if "://" in u], links
    # And it really draws: every vega chart is rendered by Chromium from the file alone.
    shown = render_offline(page)
    assert shown["embeds"] >= 3 and shown["charts"] == shown["embeds"], shown
    assert not [u for u in shown["resources"] if not u.startswith(("file:", "data:", "blob:"))]


def _digests(project: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(project)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in ("data/prepared", "models", "reports")
        for p in sorted((project / folder).rglob("*"))
        if p.is_file()
    }


def test_dvc_push_from_one_clone_and_pull_into_another(smoke_project):
    project = smoke_project
    dvc(project, "repro")  # whatever earlier tests left, make the workspace match dvc.lock
    sh(project, "git", "add", "-A")  # dvc.lock and the .gitignore files DVC wrote
    sh(project, "git", "commit", "-qm", "pipeline results", check=False)  # may be committed
    remote = project.parent / "fashion-mnist-mlops-dvc-storage"  # the default: beside the repo
    pushed = dvc(project, "push")
    assert remote.is_dir() and any(remote.rglob("*")), pushed.stdout

    other = project.parent / "second-clone"
    sh(project.parent, "git", "clone", "-q", str(project), str(other))
    assert not (other / "models" / "model.keras").exists()
    dvc(other, "pull")
    assert _digests(other) == _digests(project)
    status = dvc(other, "status")
    assert "up to date" in status.stdout.lower(), status.stdout
    # Pulled outputs count as built: nothing to retrain in the second clone.
    again = dvc(other, "repro")
    assert "Running stage" not in again.stdout, again.stdout
