"""Plain helpers the tests share (fixtures live in conftest.py, which tests never import).

Nothing here imports TensorFlow when loaded: the stage functions below import theirs when
first called, so collecting the tests stays fast (conftest.py refuses a module that does).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from fmnist_mlops.config.compose import compose
from fmnist_mlops.data.idx import SPECS
from fmnist_mlops.runtime.processes import running as http_process  # noqa: F401 - for the tests

ROOT = Path(__file__).resolve().parents[1]
# The system data folder, from the config group (conf/data/), like every stage reads it.
SYSTEM_DATA = Path(compose().data.system_dir)
PIPELINE_OUTPUT_DIRS = ("data", "models", "reports")


def load_script(relative: str):
    """A script of the checkout (``tools/targets.py``) as a module, without touching sys.path.

    A script run directly imports its folder's modules by bare name (``from measure import
    run_timed``): those are loaded first, under those names, as Python would find them.
    """
    name = "script_" + "_".join(Path(relative).with_suffix("").parts)
    return sys.modules[name] if name in sys.modules else _load(name, ROOT / relative)


def _load(name: str, path: Path):
    import ast

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            sibling = path.parent / f"{node.module}.py"
            if sibling.is_file() and node.module not in sys.modules:
                _load(node.module, sibling)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- the stages, imported on first call ------------------------------------------------------


def train(ctx, **kwargs):
    """:func:`fmnist_mlops.train.training.train`."""
    from fmnist_mlops.train.training import train as run

    return run(ctx, **kwargs)


def evaluate(ctx, **kwargs):
    """The metrics of :func:`fmnist_mlops.evaluate.evaluation.evaluate_in` (scoring alone)."""
    from fmnist_mlops.evaluate.evaluation import evaluate_in

    return evaluate_in(ctx, **kwargs)[0]


def fit(*args, **kwargs):
    """:func:`fmnist_mlops.train.fitting.fit`."""
    from fmnist_mlops.train.fitting import fit as run

    return run(*args, **kwargs)


def build_report(ctx, **kwargs):
    """:func:`fmnist_mlops.evaluate.reporting.build_report`."""
    from fmnist_mlops.evaluate.reporting import build_report as run

    return run(ctx, **kwargs)


def evaluate_and_promote(ctx, **kwargs):
    """:func:`fmnist_mlops.registry.stages.evaluate_and_promote`."""
    from fmnist_mlops.registry.stages import evaluate_and_promote as run

    return run(ctx, **kwargs)


def pipeline(tmp: Path, prepared: Path, uri: str, *overrides: str):
    """Train and evaluate a smoke model into the store at ``uri``; its config."""
    from fmnist_mlops.tracking.context import open_stage

    cfg = smoke_config(tmp, prepared, *overrides)
    with open_dict(cfg):
        cfg.mlflow.tracking_uri = uri
    train(open_stage(cfg))
    evaluate(open_stage(cfg))
    return cfg


def start_register(cfg, prepared: Path, uri: str, lock_url: str | None = None):
    """A real `python src/register.py` for the model that ``cfg``'s pipeline trained."""
    cmd = [
        sys.executable,
        "src/register.py",
        "+experiment=smoke",
        f"paths.out={cfg.paths.out}",
        f"paths.prepared={prepared}",
        f"paths.scratch={cfg.paths.scratch}",
        f"mlflow.tracking_uri={uri}",
    ]
    if lock_url:
        cmd.append(f"registry.lock_url={lock_url}")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def race_promotions(runs: dict, prepared: Path, lock_url: str | None = None):
    """Two processes promote the weak and the strong model of ``runs`` at once; returns the
    client, the champion and the strong model's run id."""
    from mlflow.tracking import MlflowClient

    weak, strong = runs["weak"], runs["strong"]
    uri = strong.mlflow.tracking_uri
    procs = [start_register(c, prepared, uri, lock_url) for c in (weak, strong)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("fashion-mnist-cnn", "champion")
    strong_run = json.loads((Path(strong.paths.out) / "models/run.json").read_text())["run_id"]
    return client, champion, strong_run


# The smallest network that still trains: for tests of signals, resuming and the reaper, which
# need a training process, not a good model.
TINY_MODEL = ("model.filters=[8]", "model.dense_units=16")


def training_command(tmp_path: Path, prepared: Path, epochs: int = 200, *args: str):
    """A `python src/train.py` command of the tiny model on the smoke split, ``epochs`` long
    (patience as long: it is not stopped early), and its store's URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable,
        "src/train.py",
        "+experiment=smoke",
        *TINY_MODEL,
        f"train.epochs={epochs}",
        f"train.patience={epochs}",
        "train.batch_size=16",
        f"paths.prepared={prepared}",
        f"paths.scratch={tmp_path / 'scratch'}",
        f"mlflow.tracking_uri={uri}",
        *args,
    ]
    return cmd, uri


def start_training(tmp_path: Path, prepared: Path, epochs: int = 200, *args: str):
    """:func:`training_command` started, once it has logged its first epoch: (process, URI)."""
    import time

    cmd, uri = training_command(tmp_path, prepared, epochs, *args)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until an epoch has been logged
        if read_only_rows(tmp_path / "mlflow.db", "select 1 from metrics where key='val_loss'"):
            return proc, uri
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.communicate()[1][-2000:]}")
        time.sleep(0.3)
    proc.kill()
    pytest.fail("training never logged an epoch")


def require_real_data() -> Path:
    missing = [s.filename for s in SPECS if not (SYSTEM_DATA / s.filename).is_file()]
    if missing:
        pytest.fail(
            f"real Fashion-MNIST missing in {SYSTEM_DATA} ({missing}): "
            "`apt-get install dataset-fashion-mnist` (make data does it as root)"
        )
    return SYSTEM_DATA


def venv_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first, no inherited MLflow URI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    # As a user runs them: MLflow turns on test-only session checks under PYTEST_CURRENT_TEST.
    env.pop("PYTEST_CURRENT_TEST", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # Temporary repos commit (DVC experiments too); CI machines may have no git identity.
    for key, value in (("GIT_AUTHOR_NAME", "fmnist test"), ("GIT_COMMITTER_NAME", "fmnist test")):
        env.setdefault(key, value)
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "test@fashion-mnist-mlops.invalid")
    env.update(extra)
    return env


def smoke_config(tmp: Path, prepared: Path, *overrides: str):
    cfg = compose(["+experiment=smoke", *overrides], config_dir=ROOT / "conf")
    with open_dict(cfg):
        cfg.paths.prepared = str(prepared)
        cfg.paths.out = str(tmp / "out")
        cfg.paths.scratch = str(tmp / "scratch")
        cfg.mlflow.tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
        cfg.train.verbose = 0
    return cfg


def copy_project(dest: Path) -> Path:
    """Copy the project's tracked and unignored files into ``dest`` as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        if rel.split("/")[0] in PIPELINE_OUTPUT_DIRS:
            continue  # like a fresh clone: the pipeline makes these
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = venv_env()
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)
    return dest


def clone_store(src: Path, dst: Path, *, text: bool = True) -> Path:
    """Copy a folder of MLflow stores and outputs as if it had been made at ``dst``.

    Stores and run records hold absolute paths (artifact locations, output folders): every
    mention of ``src`` in a SQLite table (and, with ``text``, in a small text file) becomes
    ``dst``, so the copy is independent and nothing written through it lands in the original.
    A DVC project is cloned with ``text=False``: its tracked outputs must keep their hashes.
    """
    shutil.copytree(src, dst, symlinks=True)
    old, new = str(src), str(dst)
    for path in dst.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        if path.suffix == ".db":
            _rewrite_sqlite(path, old, new)
        elif text and path.stat().st_size < 1 << 20:
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue
            if old in text:
                path.write_text(text.replace(old, new))
    return dst


def _rewrite_sqlite(path: Path, old: str, new: str) -> None:
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            for column in [r[1] for r in db.execute(f'pragma table_info("{table}")')]:
                db.execute(
                    f'update "{table}" set "{column}" = replace("{column}", ?, ?) '
                    f'where instr("{column}", ?) > 0',
                    (old, new, old),
                )


def yaml_dict(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path))


def read_only_rows(db_path: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` from a SQLite file another process is writing ([] until it can answer).

    Read-only on purpose: opening the store with Optuna or MLflow while the program under test
    creates its tables would race it through their schema migrations.
    """
    if not db_path.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(
    project: Path,
    *cmd: str,
    check: bool = True,
    timeout: int = 900,
    env: dict[str, str] | None = None,
):
    """Run ``cmd`` in ``project`` with the venv first on PATH; fail with its output.

    ``env``: variables added to :func:`venv_env` (e.g. ``MLFLOW_TRACKING_URI``).
    """
    result = subprocess.run(
        cmd,
        cwd=project,
        capture_output=True,
        text=True,
        env=venv_env(**(env or {})),
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def dvc(project: Path, *args: str, check: bool = True):
    """`dvc ARGS` in ``project`` (:func:`sh`)."""
    return sh(project, str(Path(sys.executable).parent / "dvc"), *args, check=check)


def client_for(project: Path):
    """An MLflow client of ``project``'s own SQLite store."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def training_metric_keys(run) -> set[str]:
    """The metric keys a run's training logged, without MLflow's sampled ``system/*`` metrics.

    MLflow publishes system metrics once per sampling interval (10 s by default), so whether a
    run has any depends on how long it ran, not on what it trained: two runs of the same
    settings compare on these keys.
    """
    return {key for key in run.data.metrics if not key.startswith("system/")}


def assert_refused(proc, script: str, *needles: str) -> str:
    """Exit 2 and stderr is the one line: no library's log or warning beside it."""
    said = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(said) == 1 and said[0].startswith(f"{script}: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in said[0], said[0]
    return said[0]
