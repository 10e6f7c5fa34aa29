"""Shared fixtures: real data, shrunk configs (``+experiment=smoke``), temporary stores.

What takes a training to make (the smoke split, a registered champion, weak and strong runs,
a backup) is built once per test session, even across pytest-xdist's worker processes, and
each test that changes it gets its own copy (:func:`helpers.clone_store`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    clone_store,
    copy_project,
    dvc,
    free_port,
    pipeline,
    read_only_rows,
    require_real_data,
    sh,
    smoke_config,
    venv_env,
)
from omegaconf import open_dict

from fmnist_mlops.config.compose import compose
from fmnist_mlops.runtime.files import file_lock

HEAVY_AT_COLLECTION = ("tensorflow", "keras")


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """Collecting a test module must not import TensorFlow: the fast tier stays fast.

    A module that needs it imports it inside its tests or fixtures.
    """
    before = [m for m in HEAVY_AT_COLLECTION if m in sys.modules]
    report = yield
    if isinstance(collector, pytest.Module) and not before:
        pulled = [m for m in HEAVY_AT_COLLECTION if m in sys.modules]
        if pulled:
            raise pytest.UsageError(
                f"{collector.path.name} imports {pulled[0]} when collected: import it inside "
                "the tests or fixtures that need it"
            )
    return report


TIERS = ("integration", "slow")  # unmarked: the fast tier (pyproject.toml)


def pytest_collection_modifyitems(items):
    """A test belongs to one tier: ``integration`` and ``slow`` together would be ambiguous."""
    both = [i.nodeid for i in items if all(i.get_closest_marker(t) for t in TIERS)]
    if both:
        raise pytest.UsageError(f"marked both integration and slow: {both}")


@pytest.fixture(scope="session")
def build_once(tmp_path_factory) -> Callable[[str, Callable[[Path], None]], Path]:
    """``build_once(name, build)``: the folder ``build`` filled, once per test session.

    Under pytest-xdist every worker has its own base temp folder inside the session's; the
    session's is shared, and a file lock lets the first worker build while the others wait.
    """
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"

    def once(name: str, build: Callable[[Path], None]) -> Path:
        folder = root / name
        done = root / f"{name}.built"
        with file_lock(root / f"{name}.lock"):
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                build(folder)
                done.touch()
        return folder

    return once


@pytest.fixture(scope="session")
def project_root() -> Path:
    """The checkout under test."""
    return ROOT


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for the project's commands run as subprocesses (see :func:`venv_env`)."""
    return venv_env()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of the real Fashion-MNIST files (the test fails if they are missing)."""
    return require_real_data()


@pytest.fixture(scope="session")
def project_copier():
    """:func:`copy_project`: a fresh-clone-like copy of the checkout in a given folder."""
    return copy_project


@pytest.fixture(scope="session")
def session_env() -> dict[str, str]:
    """:func:`venv_env`, for session- and module-scoped fixtures."""
    return venv_env()


@pytest.fixture(scope="session")
def read_only_rows_fn():
    """:func:`read_only_rows`, for tests that poll a store another process writes."""
    return read_only_rows


@pytest.fixture(scope="session")
def smoke_prepared(build_once) -> Path:
    """The smoke split of the real data, prepared once per session (never written to)."""
    require_real_data()

    def build(folder: Path) -> None:
        from fmnist_mlops.data.preparation import prepare

        cfg = compose(["+experiment=smoke"], config_dir=ROOT / "conf")
        with open_dict(cfg):
            cfg.paths.prepared = str(folder / "prepared")
        prepare(cfg)

    return build_once("smoke-data", build) / "prepared"


@pytest.fixture
def smoke_cfg(tmp_path, smoke_prepared):
    """A tiny real config writing only under ``tmp_path``."""
    return smoke_config(tmp_path, smoke_prepared)


@pytest.fixture(scope="session")
def champion_template(build_once, smoke_prepared) -> Path:
    """A smoke store whose one run was trained, evaluated and promoted to @champion."""

    def build(folder: Path) -> None:
        from fmnist_mlops.registry.promotion import promote
        from fmnist_mlops.tracking.context import open_stage

        cfg = pipeline(folder, smoke_prepared, f"sqlite:///{folder / 'mlflow.db'}")
        assert promote(open_stage(cfg))["promote"]

    return build_once("champion", build)


@pytest.fixture(scope="session")
def shared_champion(champion_template, smoke_prepared):
    """The config of :func:`champion_template` itself, for tests that only read it (serving)."""
    return smoke_config(champion_template, smoke_prepared)


@pytest.fixture
def champion(champion_template, smoke_prepared, tmp_path):
    """The config of this test's own copy of :func:`champion_template`."""
    return smoke_config(clone_store(champion_template, tmp_path / "champion"), smoke_prepared)


# Runs in one store, each trained and evaluated, none registered: (overrides).
RUNS = {
    "weak": ("train.epochs=1",),
    "strong": ("train.epochs=2",),  # beats the weak one on this seed
    "other": ("train.epochs=1", "seed=5"),
    # The champion history's walk: three beats strong, four beats weak (asserted where used).
    "three": ("train.epochs=3",),
    "four": ("train.epochs=3", "seed=5"),
}


@pytest.fixture(scope="session")
def runs_template(build_once, smoke_prepared) -> Path:
    """:data:`RUNS` in one store (``mlflow.db``), each with its outputs in its own folder."""

    def build(folder: Path) -> None:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        for name, overrides in RUNS.items():
            pipeline(folder / name, smoke_prepared, uri, *overrides)

    return build_once("runs", build)


@pytest.fixture
def trained_runs(runs_template, smoke_prepared, tmp_path) -> dict:
    """This test's own copy of :func:`runs_template`: {name: its config}."""
    folder = clone_store(runs_template, tmp_path / "runs")
    configs = {}
    for name, overrides in RUNS.items():
        cfg = smoke_config(folder / name, smoke_prepared, *overrides)
        with open_dict(cfg):
            cfg.mlflow.tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        configs[name] = cfg
    return configs


@pytest.fixture
def free_tcp_port() -> int:
    """A port nothing listens on, on 127.0.0.1."""
    return free_port()


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.getuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian package postgresql)."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert versions, "PostgreSQL missing: `apt-get install postgresql` (.ci/run does)"
    bindir = versions[-1].parent
    home = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))
    data = home / "data"
    if os.getuid() == 0:
        shutil.chown(home, "postgres")
    home.chmod(0o755)
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    opts = f"-p {port} -k {home} -c listen_addresses=127.0.0.1"
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(home / "log"),
                "-w",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    subprocess.run(
        _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
        capture_output=True,
    )
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def reproduced_project(build_once) -> Path:
    """A fresh-clone-like copy of the project after `dvc repro` of the smoke config (once)."""
    require_real_data()

    def build(folder: Path) -> None:
        project = copy_project(folder)
        sh(project, sys.executable, "src/params.py", "+experiment=smoke")
        sh(project, "git", "commit", "-qam", "smoke params")
        dvc(project, "repro")

    return build_once("smoke-project", build)


@pytest.fixture
def smoke_project(reproduced_project, tmp_path) -> Path:
    """This test's own copy of :func:`reproduced_project`: tests never see each other's work."""
    project = clone_store(reproduced_project, tmp_path / "project", text=False)
    shutil.rmtree(project / ".dvc" / "tmp", ignore_errors=True)  # locks, queue, state caches
    return project


@pytest.fixture(scope="session")
def reproduce_envs(tmp_path_factory) -> Path:
    """Where ``make reproduce`` keeps built environments, shared by both test processes.

    The folder above each process's own base temp: one environment per lock is built once per
    session (``reproduce.build.environment`` locks it while building).
    """
    return tmp_path_factory.getbasetemp().parent / "reproduce-envs"
