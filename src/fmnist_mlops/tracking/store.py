"""The one place that decides where MLflow stores things and what every run carries."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.config.schema import MlflowCfg
from fmnist_mlops.runtime import owner
from fmnist_mlops.runtime.files import file_lock
from fmnist_mlops.runtime.paths import project_root, sqlite_dir, store_open_lock_file, store_root
from fmnist_mlops.tracking.databases import (
    DATABASE_SCHEMES,
    first_line,
    hide_password,
    scheme_of,
    unreachable,
)
from fmnist_mlops.tracking.probes import ProbeFailed, probe

log = logging.getLogger(__name__)

# MLflow rejects param values longer than this; long lists are truncated with a marker.
_MAX_PARAM_LEN = 6000


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


def git_tags(root: Path | None = None) -> dict[str, str]:
    """Return the checkout's code identity as tags (empty outside git).

    ``git_commit`` and ``git_dirty``; on a dirty tree also ``git_diff_sha256``, the digest of
    the uncommitted change to tracked files, so two runs of one commit can tell whether they
    ran the same code.
    """
    root = root or project_root()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
        diff = git("diff", "HEAD", "--no-ext-diff", "--binary") if dirty else ""
    except (OSError, subprocess.SubprocessError):
        return {}
    tags = {"git_commit": commit, "git_dirty": str(dirty).lower()}
    if dirty:
        tags["git_diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
    return tags


CODE_TAGS = ("git_commit", "git_dirty", "git_diff_sha256")


def same_code(tags: Mapping[str, str]) -> bool:
    """Whether a run with these tags ran the code checked out now (commit and any change)."""
    now = git_tags()
    return bool(now) and all(tags.get(key) == now.get(key) for key in CODE_TAGS)


def run_tags(stage: str) -> dict[str, str]:
    """Tags every run gets: stage, host, pid + process start, git state, DVC experiment."""
    me = owner.current()
    tags = {
        "stage": stage,
        "host": me["host"],
        "pid": str(me["pid"]),
        "process_start": f"{me['process_start']:.3f}",
    }
    tags.update(git_tags())
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


_SECRET_WORDS = ("password", "secret", "token", "access_key", "api_key", "credential")


def redact(flat: dict[str, Any]) -> dict[str, Any]:
    """Replace the values of keys that look like secrets (and URIs with a password) by ***."""
    out = {}
    for key, value in flat.items():
        if any(word in key.lower() for word in _SECRET_WORDS):
            out[key] = "***"
        else:
            hidden = hide_password(str(value))
            out[key] = value if hidden == str(value) else hidden
    return out


def flatten(cfg: Mapping[str, Any] | DictConfig, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config to dotted keys, the names its values are logged under as params.

    ``{"model": {"filters": [32, 64]}}`` becomes ``{"model.filters": [32, 64]}``.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def log_config(cfg: DictConfig) -> None:
    """Log every config value as a flattened dotted param and the whole config as a file.

    Secrets come from the environment, never from the config; should one be put there anyway,
    keys that look like secrets and passwords inside URIs are logged as ``***``.
    """
    params: dict[str, Any] = {}
    flat = redact(flatten(cfg))
    for key, value in flat.items():
        text = str(value)
        params[key] = text if len(text) <= _MAX_PARAM_LEN else text[:_MAX_PARAM_LEN] + "..."
    mlflow.log_params(params)
    safe = OmegaConf.create({})
    for key, value in flat.items():
        OmegaConf.update(safe, key, value, force_add=True)
    mlflow.log_text(OmegaConf.to_yaml(safe), "config.yaml")


def mark_orphaned_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of this host whose process is gone (e.g. after SIGKILL).

    A run is orphaned when its recorded pid no longer exists or now belongs to a process that
    started at another time (pid reuse). Runs of other hosts are never touched.

    Returns:
        The ids of the runs marked KILLED.
    """
    client = mlflow.tracking.MlflowClient()
    host = socket.gethostname()
    marked = []
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.host = '{host}'",
        max_results=1000,
    )
    for run in runs:
        tags = run.data.tags
        if "pid" not in tags or "process_start" not in tags:
            continue
        if owner.is_alive(tags):
            continue
        pid = tags["pid"]
        client.set_tag(run.info.run_id, "killed_reason", f"process {pid} on {host} is gone")
        client.set_terminated(run.info.run_id, status="KILLED")
        log.warning(
            "tracking: run %s was left RUNNING by process %s, now gone: marked KILLED",
            run.info.run_id,
            pid,
        )
        marked.append(run.info.run_id)
    return marked


def take_over(client: Any, run_id: str, stage: str) -> None:
    """Make this process the owner of an interrupted parent run and mark it RUNNING again.

    The owner first, then RUNNING: the orphan sweep of a job or trial starting meanwhile must
    never see the run RUNNING with its old, dead owner (and mark it KILLED).
    """
    for name, value in run_tags(stage).items():
        client.set_tag(run_id, name, value)
    if "failure" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "failure")
    client.update_run(run_id, status="RUNNING")


def run_exists(run_id: str) -> bool:
    """Whether ``run_id`` is a run of the current tracking store."""
    try:
        mlflow.tracking.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def run_record(run_id: str, split_meta: dict[str, Any]) -> dict[str, Any]:
    """What ``models/run.json`` holds for a finished train run, read from MLflow instead.

    Lets a later command (evaluation, promotion, a sweep's or a study's end) work on a run whose
    scratch folder is gone: the logged model, the best epoch and its validation scores are in
    the tracking store.

    Args:
        run_id: The train run.
        split_meta: The prepared split's ``meta.json``: the run must have been trained on it.

    Raises:
        ConfigError: ``run_id`` is not a finished train run of the current store, or it was
            trained with other data hashes or split settings than ``split_meta``'s.
    """
    from fmnist_mlops.runtime.errors import ConfigError

    client = mlflow.tracking.MlflowClient()
    where = hide_password(mlflow.get_tracking_uri())
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ConfigError(
            f"run_id={run_id} is not a run of {where}: expected the id of a finished train run"
        ) from None
    stage, status = run.data.tags.get("stage"), run.info.status
    metrics = run.data.metrics
    if stage != "train" or status != "FINISHED" or "best_epoch" not in metrics:
        raise ConfigError(
            f"run_id={run_id} is a {status} {stage or 'untagged'} run: expected the id of a "
            "finished train run"
        )
    _check_trained_on(run, split_meta)
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=10
    )
    if not models:
        raise ConfigError(f"run_id={run_id} has no logged model in {where}: train it again")
    return {
        "run_id": run_id,
        "model_uri": f"models:/{models[0].model_id}",
        "best_epoch": int(metrics["best_epoch"]),
        "epochs_trained": int(metrics["epochs_trained"]),
        "val_loss": metrics["best_val_loss"],
        "val_accuracy": metrics["best_val_accuracy"],
        "fit_seconds": metrics.get("fit_seconds"),
    }


def _check_trained_on(run: Any, meta: dict[str, Any]) -> None:
    """Refuse to score a run on a split other than the one it was trained and validated on."""
    from fmnist_mlops.runtime.errors import ConfigError

    run_id = run.info.run_id
    logged = {k: v for k, v in run.data.tags.items() if k.startswith("data.sha256.")}
    logged.update({k: v for k, v in run.data.params.items() if k.startswith("data.")})
    found = {f"data.sha256.{name}": digest for name, digest in meta["sha256"].items()}
    found["data.val_split"] = str(meta["val_split"])
    found["data.split_seed"] = str(meta["split_seed"])
    found.update({f"data.max_{k}": str(v) for k, v in meta["max"].items()})
    for key, value in found.items():
        if key in logged and logged[key] != value:
            raise ConfigError(
                f"run_id={run_id} was trained with {key}={logged[key]}, the prepared split has "
                f"{value}: expected the data settings it was trained with (e.g. the same "
                "+experiment)"
            )
