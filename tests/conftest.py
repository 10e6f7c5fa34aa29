"""Shared fixtures: real data, shrunk configs (``+experiment=smoke``), temporary stores."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    copy_project,
    free_port,
    read_only_rows,
    require_real_data,
    smoke_config,
    venv_env,
)
from omegaconf import open_dict

from fmnist_mlops.config import compose


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
def smoke_prepared(tmp_path_factory) -> Path:
    """The smoke split of the real data, prepared once per session."""
    require_real_data()
    from fmnist_mlops.preparation import prepare

    folder = tmp_path_factory.mktemp("smoke-data") / "prepared"
    cfg = compose(["+experiment=smoke"], config_dir=ROOT / "conf")
    with open_dict(cfg):
        cfg.paths.prepared = str(folder)
    prepare(cfg)
    return folder


@pytest.fixture
def smoke_cfg(tmp_path, smoke_prepared):
    """A tiny real config writing only under ``tmp_path``."""
    return smoke_config(tmp_path, smoke_prepared)


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
