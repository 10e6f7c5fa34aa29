"""Where MLflow stores things: the tracking URI chosen, checked and opened; models read back."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator

import mlflow

from fmnist_mlops.config.schema import MlflowCfg
from fmnist_mlops.runtime.files import file_lock
from fmnist_mlops.runtime.paths import sqlite_dir, store_open_lock_file, store_root
from fmnist_mlops.tracking.databases import (
    DATABASE_SCHEMES,
    first_line,
    hide_password,
    scheme_of,
    unreachable,
)
from fmnist_mlops.tracking.probes import ProbeFailed, probe

log = logging.getLogger(__name__)


def tracking_setting(configured: str | None) -> tuple[str | None, str]:
    """Where the tracking URI comes from and its value.

    ``configured`` (``mlflow.tracking_uri``) if set, else ``$MLFLOW_TRACKING_URI``, else
    (setting None) the default ``sqlite:///<project root>/mlflow.db`` with artifacts in
    ``<root>/mlruns``, so every stage (and every working directory, DVC's temporary experiment
    workspaces included) writes to the same store.
    """
    if configured:
        return "mlflow.tracking_uri", str(configured)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return "MLFLOW_TRACKING_URI", env
    return None, f"sqlite:///{store_root() / 'mlflow.db'}"


def tracking_uri(configured: str | None) -> str:
    """The tracking URI every stage uses (see :func:`tracking_setting`)."""
    return tracking_setting(configured)[1]


_SCHEMES = (*DATABASE_SCHEMES, "mysql", "mssql", "http", "https", "file", "databricks")


def check_uri(setting: str, uri: str, timeout: float = 5.0) -> None:
    """Refuse a tracking URI that cannot work, in one line, before MLflow retries for minutes.

    Raises:
        ConfigError: Unknown scheme, an SQLite folder that cannot be made, or a tracking
            server that does not answer ``/health``.
    """
    import urllib.error
    import urllib.request

    from fmnist_mlops.runtime.errors import ConfigError

    shown = hide_password(uri)
    scheme = scheme_of(uri)
    expected = "expected sqlite:///path/mlflow.db, postgresql://..., or http(s)://host:port"
    if scheme not in _SCHEMES:
        raise ConfigError(f"{setting}={shown!r} has no supported scheme: {expected}")
    folder = sqlite_dir(uri)
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{setting}={shown!r}: cannot create {folder} ({exc.strerror}): {expected}"
            ) from None
    if scheme == "postgresql":
        problem = unreachable(uri, timeout)
        if problem is not None:
            raise ConfigError(f"{setting}={shown!r} cannot be reached ({problem})")
    if scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(
                f"{setting}={shown!r} does not answer ({reason}): start the tracking server "
                "(`make server`) or fix the URL"
            ) from None


def apply_http_settings(settings: MlflowCfg) -> None:
    """MLflow's HTTP retries and timeout from ``mlflow.*`` (MLflow reads them per request)."""
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.http_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(settings.http_backoff_factor)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.http_timeout_s)


def connect(uri: str) -> None:
    """Point MLflow's tracking (and, for SQLite, registry) at ``uri``."""
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        # Keep the registry on the same database as the runs.
        mlflow.set_registry_uri(uri)


@contextlib.contextmanager
def _first_open_lock(uri: str) -> Iterator[None]:
    """Serialise the first opening of an SQLite store by the processes of this host.

    Opening creates the tables and runs MLflow's migrations; two processes doing it at once
    (two queued experiments, two workers on a fresh clone) make one fail with "Online
    migration expected to match one row". Other stores are created by their server.
    """
    if sqlite_dir(uri) is None:
        yield
        return
    with file_lock(store_open_lock_file(uri)):
        yield


def setup(settings: MlflowCfg) -> str:
    """Point MLflow at the store and make sure the experiment exists.

    Args:
        settings: The ``mlflow`` config (experiment name, tracking URI or null).

    Returns:
        The experiment id.
    """
    setting, uri = tracking_setting(settings.tracking_uri)
    apply_http_settings(settings)
    check_uri(setting or "the default tracking URI", uri)
    connect(uri)
    name = settings.experiment
    try:
        with _first_open_lock(uri):
            experiment = mlflow.get_experiment_by_name(name)
    except Exception as exc:  # SQLAlchemy or MLflow errors: a store that cannot be opened
        from fmnist_mlops.runtime.errors import ConfigError

        raise ConfigError(
            f"{setting or 'the default tracking URI'}={hide_password(uri)!r} is not usable "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from None
    if experiment is None:
        db_dir = sqlite_dir(uri)
        artifact_location = (db_dir / "mlruns").as_uri() if db_dir else None
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:
            # Another process created it between our lookup and create.
            experiment_id = mlflow.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    # Before any run: an artifact store that cannot take a write is refused in one line now,
    # not after minutes of upload retries at the end of a training.
    try:
        probe(
            mlflow.get_experiment(experiment_id).artifact_location,
            f"the artifact store of experiment {name!r}",
            settings.probe_timeout_s,
            uri if uri.startswith(("http://", "https://")) else None,
        )
    except ProbeFailed as exc:
        from fmnist_mlops.runtime.errors import ConfigError

        raise ConfigError(str(exc)) from None
    return experiment_id


def load_logged_model(model_uri: str, flavor=None):
    """The model logged at ``model_uri``, loaded through a download that is then removed.

    MLflow downloads a model into a new temporary folder on every load and never removes it
    (4 MB a load here): each evaluation and each ``predict.py`` left a copy behind. A loaded
    model holds everything in memory (the Keras network, the class names), so the download can
    go as soon as it is loaded.

    Args:
        model_uri: ``models:/...``, ``runs:/...`` or a path.
        flavor: The MLflow flavor module whose ``load_model`` to use (default ``mlflow.pyfunc``).
    """
    loader = (flavor or mlflow.pyfunc).load_model
    with tempfile.TemporaryDirectory(prefix="fmnist-model-") as download:
        return loader(model_uri, dst_path=download)
