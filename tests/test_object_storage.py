"""Object storage for real: MLflow artifacts and the DVC remote on an S3-compatible server.

moto's standalone server (``moto_server``, the ``dev`` extra) runs as its own process on
127.0.0.1; boto3 and dvc-s3 (the ``s3`` extra) talk to it exactly as to S3. These tests fail,
not skip, when the extra is missing. Credentials come only from the environment, and a marker
secret must show up nowhere the project writes.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    assert_refused,
    copy_project,
    free_port,
    http_process,
    require_real_data,
    venv_env,
)

# One S3 server and one team project for the module: one test process (xdist).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("object-storage")]
BIN = Path(sys.executable).parent
BUCKET = "fmnist-team"
SECRET = "marker-secret-7f3a9c1e-never-logged"


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real S3-compatible server process on loopback with one bucket; its endpoint URL."""
    import boto3  # the s3 extra: an ImportError here fails the test, as it should

    home = tmp_path_factory.mktemp("s3")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with http_process(cmd, venv_env(), f"{url}/moto-api/", home / "moto.log"):
        client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id="fmnist",
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield url, client


def s3_env(endpoint: str, **extra: str) -> dict[str, str]:
    """Credentials and endpoint from the environment only, as a team member would have them."""
    return venv_env(
        AWS_ACCESS_KEY_ID="fmnist",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        MLFLOW_S3_ENDPOINT_URL=endpoint,
        **extra,
    )


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def keys(client, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def digests(root: Path) -> dict[str, str]:
    files = [p for d in ("data/prepared", "models", "reports") for p in (root / d).rglob("*")]
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.is_file() and p.name != ".gitignore"
    }


@pytest.fixture(scope="session")
def team(s3, tmp_path_factory):
    """The tracking server with its artifacts in the bucket, and a smoke pipeline run through it."""
    require_real_data()
    endpoint, client = s3
    home = tmp_path_factory.mktemp("team")
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        str(ROOT / "src" / "server.py"),
        "--backend-store-uri",
        f"sqlite:///{home / 'server.db'}",
        "--artifacts-destination",
        f"s3://{BUCKET}/mlflow",
        "--port",
        str(port),
    ]
    with http_process(cmd, s3_env(endpoint), f"{server}/health", home / "server.log"):
        project = copy_project(home / "project")
        env = s3_env(endpoint, MLFLOW_TRACKING_URI=server)
        logs = run([sys.executable, "src/params.py", "+experiment=smoke"], project, env)
        logs += run(["git", "commit", "-qam", "smoke params"], project, env)
        # Its own temporary folder, to see what the pipeline leaves there.
        tmp = home / "tmp"
        tmp.mkdir()
        logs += run([str(BIN / "dvc"), "repro"], project, {**env, "TMPDIR": str(tmp)})
        yield {
            "tmp": tmp,
            "endpoint": endpoint,
            "client": client,
            "server": server,
            "home": home,
            "project": project,
            "env": env,
            "logs": logs,
        }


def test_mlflow_artifacts_land_in_the_bucket_and_nothing_local(team):
    project, client = team["project"], team["client"]
    stored = keys(client, "mlflow/")
    assert any(k.endswith("checkpoints/model.keras") for k in stored), stored[:20]
    assert any(k.endswith("plots/history.png") for k in stored)
    assert any(k.endswith("evaluation/confusion_matrix.png") for k in stored)
    assert any(k.endswith("/MLmodel") for k in stored), "the logged model is in the bucket"
    assert not (project / "mlruns").exists() and not (project / "mlflow.db").exists()
    assert not (team["home"] / "mlruns").exists()


def left_behind(tmp: Path) -> list[str]:
    """What is in ``tmp`` but TensorFlow's autograph sources (kept there by design)."""
    return sorted(p.name for p in tmp.iterdir() if not p.name.startswith("__autograph_generated"))


def test_evaluate_and_predict_leave_no_model_download_behind(team, tmp_path):
    """With artifacts in a bucket MLflow downloads a model into a new temporary folder on
    every load and never removes it: each evaluation and each prediction left 4 MB behind."""
    assert left_behind(team["tmp"]) == [], "dvc repro (train, evaluate)"
    env = {**team["env"], "TMPDIR": str(tmp_path)}
    run([sys.executable, "src/predict.py", "--test-samples=2"], team["project"], env)
    assert left_behind(tmp_path) == [], "predict.py"


def test_the_champion_from_the_bucket_serves(team):
    """What `make serve` runs, against the shared server whose artifacts are in the bucket."""
    from mlflow.tracking import MlflowClient

    env = team["env"]
    # The registry too: an earlier test in this process may have pointed MLflow's default
    # registry URI elsewhere.
    server = team["server"]
    champion = MlflowClient(server, registry_uri=server).get_model_version_by_alias(
        "fashion-mnist-cnn", "champion"
    )
    assert str(champion.version) == "1"
    port = free_port()
    cmd = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        "models:/fashion-mnist-cnn@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with http_process(cmd, env, f"{url}/ping", team["home"] / "serve.log", timeout=180):
        body = json.dumps({"inputs": [[[0] * 28] * 28], "params": {"top_k": 2}}).encode()
        request = urllib.request.Request(
            f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    assert response.status == 200
    assert len(answer["predictions"][0]["probabilities"]) == 10


def test_dvc_push_to_s3_and_pull_into_a_fresh_clone(team, tmp_path):
    project, env, client = team["project"], team["env"], team["client"]
    dvc = str(BIN / "dvc")
    run([dvc, "remote", "add", "-d", "s3", f"s3://{BUCKET}/dvc"], project, env)
    run([dvc, "remote", "modify", "s3", "endpointurl", team["endpoint"]], project, env)
    run(["git", "add", "-A"], project, env)
    run(["git", "commit", "-qm", "S3 remote, pipeline results"], project, env)
    run([dvc, "push"], project, env)
    assert keys(client, "dvc/"), "dvc push wrote nothing to the bucket"

    other = tmp_path / "second-clone"
    run(["git", "clone", "-q", str(project), str(other)], tmp_path, env)
    assert not (other / "models" / "model.keras").exists()
    run([dvc, "pull"], other, env)
    assert digests(other) == digests(project)


def test_the_secret_shows_up_nowhere_the_project_writes(team):
    from mlflow.tracking import MlflowClient

    project = team["project"]
    client = MlflowClient(team["server"], registry_uri=team["server"])
    experiment = client.get_experiment_by_name("fashion-mnist")
    for found in client.search_runs([experiment.experiment_id]):
        assert SECRET not in json.dumps(found.data.params)
        assert SECRET not in json.dumps(found.data.tags)
    assert SECRET not in team["logs"]
    assert SECRET.encode() not in (team["home"] / "server.db").read_bytes()
    assert SECRET not in (team["home"] / "server.log").read_text()
    assert SECRET not in (project / ".dvc" / "config").read_text()
    for path in (project / ".dvc").rglob("config*"):
        assert SECRET not in path.read_text(errors="replace")


def test_make_server_refuses_an_artifact_store_that_cannot_take_a_write(s3, tmp_path):
    endpoint, _ = s3

    def server(destination: str, s3_endpoint: str) -> tuple[subprocess.CompletedProcess, float]:
        cmd = [sys.executable, str(ROOT / "src" / "server.py")]
        cmd += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
        cmd += ["--artifacts-destination", destination, "--port", str(free_port())]
        started = time.monotonic()
        done = subprocess.run(
            cmd, env=s3_env(s3_endpoint), capture_output=True, text=True, timeout=120
        )
        return done, time.monotonic() - started

    refused, seconds = server(f"s3://{BUCKET}/mlflow", "http://127.0.0.1:9")  # nothing there
    line = assert_refused(refused, "server")
    assert "s3://fmnist-team/mlflow at http://127.0.0.1:9" in line and "connection refused" in line
    assert seconds < 30, seconds
    refused, seconds = server("s3://no-such-bucket/mlflow", endpoint)
    assert "no such bucket" in assert_refused(refused, "server") and seconds < 30
    # An S3 server that checks credentials (moto with authentication on): ours are unknown.
    port = free_port()
    checking = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    env = venv_env(INITIAL_NO_AUTH_ACTION_COUNT="0")
    with http_process(cmd, env, f"{checking}/moto-api/", tmp_path / "moto.log"):
        refused, seconds = server(f"s3://{BUCKET}/mlflow", checking)
    assert "access denied" in assert_refused(refused, "server") and seconds < 30
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    refused, _ = server(str(blocker / "artifacts"), endpoint)
    assert "cannot take a write" in assert_refused(refused, "server")
    assert SECRET not in refused.stderr + refused.stdout


def test_a_training_whose_artifact_store_broke_fails_in_seconds_before_any_run(
    s3, tmp_path, smoke_prepared
):
    """The server started fine; its bucket is gone since. The client (no bucket credentials:
    artifacts are proxied) finds out through the server's artifact endpoint, before a run."""
    from mlflow.tracking import MlflowClient

    endpoint, client = s3
    bucket = "fmnist-vanishing"
    client.create_bucket(Bucket=bucket)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, str(ROOT / "src" / "server.py"), "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"]
    cmd += ["--artifacts-destination", f"s3://{bucket}/mlflow"]
    with http_process(cmd, s3_env(endpoint), f"{url}/health", tmp_path / "server.log"):
        client.delete_bucket(Bucket=bucket)  # empty: the server's own probe cleaned up
        started = time.monotonic()
        train = subprocess.run(
            [
                sys.executable,
                "src/train.py",
                "+experiment=smoke",
                f"paths.prepared={smoke_prepared}",
                f"paths.scratch={tmp_path / 'scratch'}",
                f"mlflow.tracking_uri={url}",
            ],
            cwd=ROOT,
            env=venv_env(),  # no AWS credentials, no S3 endpoint: only the server
            capture_output=True,
            text=True,
            timeout=300,
        )
        seconds = time.monotonic() - started
        line = assert_refused(train, "train")
        assert "artifact store of experiment 'fashion-mnist'" in line, line
        # The server answers a bare 500 (the cause is in its log only), said as such.
        assert "cannot take a write: HTTP 500 to a probe PUT" in line, line
        assert "see the tracking server's log" in line
        assert "NoSuchBucket" in (tmp_path / "server.log").read_text()
        assert seconds < 30, seconds
        store = MlflowClient(url)
        experiment = store.get_experiment_by_name("fashion-mnist")
        assert store.search_runs([experiment.experiment_id]) == [], "no run created"
