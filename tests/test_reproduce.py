"""`make reproduce`: a registered version rebuilt from its record, with real git, uv and DVC.

The version is the smoke champion that `dvc repro` trained in a fresh-clone-like copy of the
project; the rebuild runs that commit's own stage commands in a temporary worktree.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, client_for, dvc, sh, venv_env

from fmnist_mlops.config.commands import ToleranceCfg
from fmnist_mlops.reproduce.comparison import compare
from fmnist_mlops.reproduce.source import LATER_FIELDS

MODEL = "fashion-mnist-cnn"
TOL = ToleranceCfg(accuracy=0.002, loss=0.01)


def _side(val_accuracy, weights="w1", test=0.9):
    n = len(val_accuracy)
    return {
        "epochs": {
            "loss": [0.5 - 0.01 * i for i in range(n)],
            "accuracy": [0.8] * n,
            "val_loss": [0.4] * n,
            "val_accuracy": list(val_accuracy),
        },
        "test_accuracy": test,
        "test_loss": 0.3,
        "best_epoch": n - 1,
        "epochs_trained": n,
        "weights_sha256": weights,
        "fit_seconds": 1.0,
    }


@pytest.mark.parametrize(
    ("rebuilt", "verdict", "why"),
    [
        (_side([0.80, 0.85, 0.88]), "exact", "same weights"),
        (_side([0.80, 0.85, 0.88], weights="w2"), "close", "other weights"),
        (_side([0.80, 0.8515, 0.88], weights="w2"), "close", "within 0.002"),
        (_side([0.80, 0.85]), "close", "3 epochs recorded, 2 rebuilt"),
        (_side([0.80, 0.86, 0.88], weights="w2"), "differs", "first diverges at epoch 1"),
        (_side([0.80, 0.85, 0.88], weights="w2", test=0.95), "differs", "test_accuracy"),
    ],
)
def test_the_verdict_names_what_differs_first(rebuilt, verdict, why):
    judged = compare(_side([0.80, 0.85, 0.88]), rebuilt, TOL)
    assert judged.verdict == verdict and why in judged.why, judged.why


def test_equal_metrics_with_other_weights_are_not_exact():
    judged = compare(_side([0.8, 0.9]), _side([0.8, 0.9], weights="other"), TOL)
    assert judged.verdict == "close"


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["reproduce.version=0"], "reproduce.version=0: expected a version number >= 1"),
        (["reproduce.tolerance.loss=-1"], "reproduce.tolerance.loss=-1 is invalid"),
        (["reproduce.keep=maybe"], "reproduce.keep="),
        (["reproduce.envs=/proc/nope"], "reproduce.envs='/proc/nope' cannot be used"),
        (["reproduce.version=5"], "reproduce.version=5: fashion-mnist-cnn has no version 5"),
        (["reproduce.version=gold"], "reproduce.version=gold: fashion-mnist-cnn has no alias"),
    ],
)
def test_bad_settings_and_unknown_versions_are_refused_in_one_line(args, start, tmp_path):
    # A fresh clone's store: opening it for the first time adds no line of MLflow's own.
    store = f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}"
    scratch = f"paths.scratch={tmp_path / 'scratch'}"
    done = sh(ROOT, sys.executable, "src/reproduce.py", store, scratch, *args, check=False)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"reproduce: error: {start}"), lines[0]
    assert not (tmp_path / "scratch").exists(), "refused before any work"


def _reproduce(project: Path, envs: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(
        project, sys.executable, "src/reproduce.py", f"reproduce.envs={envs}", *args, check=False
    )


def _state(project: Path) -> tuple[str, str]:
    """What the user's workspace looks like: git status and the list of worktrees."""
    status = sh(project, "git", "status", "--porcelain", "--untracked-files=all").stdout
    trees = sh(project, "git", "worktree", "list", "--porcelain").stdout
    return status, trees


@pytest.mark.slow
def test_reproduce_rebuilds_versions_exactly_and_refuses_what_it_cannot(
    smoke_project, reproduce_envs
):
    project = smoke_project
    envs = reproduce_envs
    client = client_for(project)
    before = _state(project)
    moves = client.get_registered_model(MODEL).tags
    weights_v1 = client.get_run(client.get_model_version(MODEL, "1").run_id).data.tags[
        "weights_sha256"
    ]

    # 1. The champion `dvc repro` trained comes back exact, and the store says so; here as a
    # version registered before the environment, machine and weights fields were recorded.
    v1 = client.get_model_version(MODEL, "1")
    for key in LATER_FIELDS:
        client.delete_tag(v1.run_id, key)
    done = _reproduce(project, envs)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["verdict"] == "exact", done.stdout[-4000:]
    assert "verdict: EXACT" in done.stdout and "data: splits" in done.stdout
    assert result["not_recorded"] == list(LATER_FIELDS) and "not recorded" in done.stdout
    assert set(result["seconds"]) >= {"environment", "data", "training", "comparison"}
    v1 = client.get_model_version(MODEL, "1")
    assert v1.tags["reproduced"] == "exact" and v1.tags["reproduced_at"]
    rep = client.get_run(result["reproduction_run_id"])
    assert rep.data.tags["reproduces_run"] == v1.run_id and rep.info.status == "FINISHED"
    assert rep.data.tags["reproduced"] == "exact" and v1.tags["reproduced_run"] == rep.info.run_id
    original = client.get_run(v1.run_id)
    steps = [m.value for m in client.get_metric_history(rep.info.run_id, "val_accuracy")]
    assert steps == [m.value for m in client.get_metric_history(v1.run_id, "val_accuracy")]
    assert rep.data.metrics["test_accuracy"] == original.data.metrics["test_accuracy"]
    # No version, no alias move, no history entry; the workspace is as it was.
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1
    assert client.get_model_version_by_alias(MODEL, "champion").version in (1, "1")
    assert client.get_registered_model(MODEL).tags == moves
    assert _state(project) == before

    # 2. A version trained with an uncommitted change: rebuilt with that change applied.
    fitting = project / "src/fmnist_mlops/train/fitting.py"
    code = fitting.read_text()
    fitting.write_text(
        code.replace("keras.utils.set_random_seed(seed)", "keras.utils.set_random_seed(seed + 1)")
    )
    dvc(project, "repro")
    fitting.write_text(code)  # back to the commit: only the recorded diff can bring it back
    v2 = client.get_model_version(MODEL, "2")
    trained = client.get_run(v2.run_id).data.tags
    assert trained["git_dirty"] == "true" and trained["weights_sha256"] != weights_v1
    done = _reproduce(project, envs, "reproduce.version=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["verdict"] == "exact", done.stdout[
        -4000:
    ]
    assert client.get_model_version(MODEL, "2").tags["reproduced"] == "exact"
    rep2 = client.get_model_version(MODEL, "2").tags["reproduced_run"]
    assert "code" in done.stdout and "+ diff" in done.stdout

    # An interrupted reproduction stops its stage, removes its worktree, records nothing.
    proc = subprocess.Popen(
        [sys.executable, "src/reproduce.py", f"reproduce.envs={envs}", "reproduce.version=2"],
        cwd=project,
        env=venv_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:  # bounded: the process ends, and with it the stream
        if "reproduce: training (" in line:
            break
    time.sleep(3)  # inside the commit's own train stage
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted by SIGTERM" in err
    assert _state(project)[1] == before[1] and not list((project / "scratch").glob("reproduce-*"))
    leftover = sh(project, "pgrep", "-f", "reproduce-.*/tree", check=False).stdout.split()
    assert leftover == [], "the commit's stage was stopped too"
    assert client.get_model_version(MODEL, "2").tags["reproduced_run"] == rep2

    # 3. Refused in one line before any work (no worktree, nothing recorded), exit 2.
    artifacts = Path(client.get_run(v2.run_id).info.artifact_uri.removeprefix("file://"))
    (artifacts / "code" / "uncommitted.diff").unlink()
    client.set_tag(v1.run_id, "git_commit", "0" * 40)
    for args, message in (
        (["reproduce.version=2"], "did not record them"),
        (["reproduce.version=1"], f"commit {'0' * 40}, which this repository does not have"),
        (["reproduce.version=9"], "has no version 9"),
        (["reproduce.version=nosuchalias"], "has no alias @nosuchalias"),
    ):
        refused = _reproduce(project, envs, *args)
        assert refused.returncode == 2, (args, refused.stderr[-2000:])
        lines = refused.stderr.strip().splitlines()
        assert (
            len(lines) == 1 and lines[0].startswith("reproduce: error:") and message in lines[0]
        ), lines
    client.set_tag(v1.run_id, "git_commit", original.data.tags["git_commit"])
    digests = {k: v for k, v in original.data.tags.items() if k.startswith("data.sha256.")}
    for key in digests:
        client.delete_tag(v1.run_id, key)
    refused = _reproduce(project, envs, "reproduce.version=1")
    assert refused.returncode == 2 and "did not record data.sha256.*" in refused.stderr
    for key, value in digests.items():
        client.set_tag(v1.run_id, key, value)
    client.set_tag(v1.run_id, "distribute.workers", "2")
    refused = _reproduce(project, envs, "reproduce.version=1")
    assert refused.returncode == 2 and "was trained by 2 workers" in refused.stderr
    client.set_tag(v1.run_id, "distribute.workers", "1")

    # 4. Data that no longer matches the record: reported, nothing trained or recorded.
    client.set_tag(v1.run_id, "data.split_sha256.train", "0" * 64)  # as if recorded that way
    runs_before = len(client.search_runs([original.info.experiment_id]))
    mismatch = _reproduce(project, envs, "reproduce.version=1")
    assert mismatch.returncode == 2, mismatch.stderr[-2000:]
    assert (
        "data mismatch: split train sha256" in mismatch.stderr
        and "nothing trained" in mismatch.stderr
    )
    assert "training (" not in mismatch.stderr
    assert len(client.search_runs([original.info.experiment_id])) == runs_before
    assert client.get_model_version(MODEL, "1").tags["reproduced_run"] == rep.info.run_id
    assert _state(project)[1] == before[1], "the worktree is gone again"
