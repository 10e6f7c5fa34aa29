"""A shared MLflow tracking server, lean enough for a 2-core box (``make server``).

The backend store is ``$MLFLOW_BACKEND_STORE_URI`` (PostgreSQL for a team, e.g.
``postgresql://mlflow:***@db.internal:5432/mlflow``) or, without it, the project's own
``sqlite:///<root>/mlflow.db``, the store the pipeline writes to. Artifacts are served through
the server (``--serve-artifacts``) from ``$MLFLOW_ARTIFACTS_DESTINATION`` or ``<root>/mlruns``,
so clients need nothing but ``MLFLOW_TRACKING_URI=http://host:port``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.runtime.paths import store_root
from fmnist_mlops.tracking.databases import (
    DATABASE_URL_STARTS,
    hide_password,
    scheme_of,
    sqlalchemy_url,
    unreachable,
)
from fmnist_mlops.tracking.probes import ProbeFailed, probe


def backend_store_uri(uri: str | None = None) -> str:
    """The backend store to serve: ``uri``, else ``$MLFLOW_BACKEND_STORE_URI``, else SQLite.

    ``postgresql://`` is rewritten to ``postgresql+psycopg://``: the project installs psycopg 3,
    which SQLAlchemy would not pick for a bare ``postgresql://`` URL.

    Raises:
        ConfigError: for a scheme the server cannot use.
    """
    uri = uri or os.environ.get("MLFLOW_BACKEND_STORE_URI") or ""
    if not uri:
        return f"sqlite:///{store_root() / 'mlflow.db'}"
    if not uri.startswith(DATABASE_URL_STARTS):
        raise ConfigError(
            f"backend store {hide_password(uri)!r} is not supported; "
            "use sqlite:///<file> or postgresql://user:password@host:port/db"
        )
    return sqlalchemy_url(uri)


def check_reachable(uri: str) -> None:
    """Fail with one line if a PostgreSQL backend cannot be reached (before MLflow starts).

    Raises:
        ConfigError: naming the host (never the password) and the driver's first line.
    """
    if scheme_of(uri) == "sqlite":
        return
    problem = unreachable(uri)
    if problem is not None:
        raise ConfigError(f"backend store {hide_password(uri)!r} is unreachable: {problem}")


def server_command(
    backend: str,
    artifacts: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
) -> list[str]:
    """The ``mlflow server`` command line serving ``backend`` and proxying ``artifacts``."""
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    return [
        mlflow_bin,
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the server: no background job runner (it alone costs ~2 GB RSS)."""
    env = dict(os.environ if base is None else base)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return env


def serve(
    backend_setting: str | None,
    artifacts_destination: str | None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: int = 1,
) -> None:
    """Check the backend and the artifacts destination, then become ``mlflow server``.

    ``make server`` (``src/server.py``): this process is replaced by the server.

    Raises:
        ConfigError: a backend that is not supported or not reachable, or an artifacts
            destination that takes no write.
    """
    backend = backend_store_uri(backend_setting)
    check_reachable(backend)
    artifacts = artifacts_destination or str(store_root() / "mlruns")
    # `mlflow server` starts and answers /health without touching its artifact store.
    try:
        probe(artifacts, "the artifacts destination", timeout=30)
    except ProbeFailed as exc:
        raise ConfigError(str(exc)) from None
    cmd = server_command(backend, artifacts, host=host, port=port, workers=workers)
    print(
        f"mlflow server: backend {hide_password(backend)}, artifacts {artifacts}, "
        f"http://{host}:{port}"
    )
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, server_env())
