"""`make server`: a shared MLflow tracking server on a real PostgreSQL, used over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy
from helpers import (
    ROOT,
    copy_project,
    free_port,
    http_process,
    require_real_data,
    sh,
    venv_env,
)

from fmnist_mlops.tracking.server import backend_store_uri, server_command

BIN = Path(sys.executable).parent


def api(url: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    full = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        full += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def run_server(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "server.py"), *args],
        capture_output=True,
        text=True,
        env=venv_env(),
        timeout=60,
    )


def test_default_backend_is_the_pipelines_sqlite_store(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert backend_store_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    # psycopg 3 is what the project installs; a bare postgresql:// would ask for psycopg2.
    assert backend_store_uri("postgresql://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"
    cmd = server_command("sqlite:////x/mlflow.db", "/x/mlruns", port=5123)
    assert cmd[1] == "server" and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--workers") + 1] == "1" and cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_unsupported_backend_is_one_line_without_the_password():
    result = run_server("--backend-store-uri", "mysql://me:hunter2@db/mlflow")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "db/mlflow" in lines[0] and "postgresql://" in lines[0]
    assert "hunter2" not in result.stderr


def test_unreachable_postgres_is_one_line_before_mlflow_starts():
    url = f"postgresql://me:hunter2@127.0.0.1:{free_port()}/mlflow"
    result = run_server("--backend-store-uri", url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and "127.0.0.1" in lines[0]
    assert "hunter2" not in result.stderr


@pytest.fixture(scope="session")
def tracking_server(postgres, tmp_path_factory):
    """``python src/server.py`` (``make server``) on a fresh database."""
    admin = sqlalchemy.create_engine(backend_store_uri(postgres), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text("CREATE DATABASE mlflow_team"))
    db = postgres.rsplit("/", 1)[0] + "/mlflow_team"
    home = tmp_path_factory.mktemp("server")
    port = free_port()
    cmd = [
        sys.executable,
        str(ROOT / "src" / "server.py"),
        "--backend-store-uri",
        db,
        "--artifacts-destination",
        str(home / "artifacts"),
        "--port",
        str(port),
    ]
    url = f"http://127.0.0.1:{port}"
    with http_process(cmd, venv_env(), f"{url}/health", home / "server.log"):
        yield url, home / "artifacts", db


@pytest.mark.slow
def test_smoke_pipeline_through_the_shared_server(tracking_server, tmp_path, reproduce_envs):
    url, artifacts, db = tracking_server
    require_real_data()
    project = copy_project(tmp_path / "project")
    env = venv_env(MLFLOW_TRACKING_URI=url)
    for cmd in (
        [sys.executable, "src/params.py", "+experiment=smoke"],
        ["git", "commit", "-qam", "smoke params"],
        [str(BIN / "dvc"), "repro"],
    ):
        done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    # Nothing went to a local store: the server is the only one.
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()

    experiment = api(url, "experiments/get-by-name", experiment_name="fashion-mnist")["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:")
    found = api(url, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    metrics_file = json.loads((project / "reports" / "metrics.json").read_text())
    run = next(r for r in found if r["info"]["run_id"] == metrics_file["run_id"])
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["test_accuracy"] == pytest.approx(metrics_file["test_accuracy"])
    assert "val_accuracy" in metrics and "loss" in metrics
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["train.epochs"] == "2" and params["data.max_train"] == "512"

    run_id = run["info"]["run_id"]
    names = {
        f["path"]
        for folder in ("plots", "evaluation", "checkpoints")
        for f in api(url, "artifacts/list", run_id=run_id, path=folder).get("files", [])
    }
    assert {
        "plots/history.png",
        "evaluation/confusion_matrix.png",
        "checkpoints/model.keras",
    } <= names, names
    # Proxied artifacts land in the server's destination, not on the client.
    assert list(artifacts.rglob("history.png")) and list(artifacts.rglob("model.keras"))

    alias = api(url, "registered-models/alias", name="fashion-mnist-cnn", alias="champion")
    assert alias["model_version"]["run_id"] == run_id

    # And the rows really live in PostgreSQL.
    engine = sqlalchemy.create_engine(backend_store_uri(db))
    with engine.connect() as conn:
        ids = {r[0] for r in conn.execute(sqlalchemy.text("select run_uuid from runs"))}
        versions = conn.execute(sqlalchemy.text("select count(*) from model_versions")).scalar()
    assert run_id in ids and versions == 1

    # The champion's history lives in the server's store too: one promotion so far.
    shown = sh(project, sys.executable, "src/champion_history.py", env={"MLFLOW_TRACKING_URI": url})
    assert shown.stdout.splitlines()[0] == "fashion-mnist-cnn@champion: 1 move, now v1"
    with engine.connect() as conn:
        tags = conn.execute(
            sqlalchemy.text(
                "select key from registered_model_tags where key like 'alias_history.%'"
            )
        ).all()
    assert [t[0] for t in tags] == ["alias_history.champion.000001"]

    # make reproduce through the server: the diff, config and checkpoint come back over HTTP.
    done = sh(
        project,
        sys.executable,
        "src/reproduce.py",
        f"reproduce.envs={reproduce_envs}",
        env={"MLFLOW_TRACKING_URI": url},
    )
    assert json.loads(done.stdout.strip().splitlines()[-1])["verdict"] == "exact", done.stdout
    version = api(url, "model-versions/get", name="fashion-mnist-cnn", version="1")
    tags = {t["key"]: t["value"] for t in version["model_version"]["tags"]}
    assert tags["reproduced"] == "exact"
