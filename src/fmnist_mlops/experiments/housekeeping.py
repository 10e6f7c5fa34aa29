"""``make clean-runs``: remove what old experiments leave, never what a model or live run needs."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from fmnist_mlops.registry import history
from fmnist_mlops.registry.rule import PREVIOUS_TAG, current_champion
from fmnist_mlops.runtime import owner
from fmnist_mlops.runtime.paths import backups_root, project_root
from fmnist_mlops.train.backup import read_state
from fmnist_mlops.train.claims import read_claim

log = logging.getLogger(__name__)


def champion_chain(client: MlflowClient, name: str, alias: str) -> list[Any]:
    """The champion's model version, then every version rollbacks would move it to, in order.

    Read from the champion's history; a registry from before the history follows the
    ``previous_champion`` tags.
    """
    chain: list[Any] = []
    version = current_champion(client, name, alias)
    moves = history.read(client, name, alias)
    if moves and version is not None:
        chain.append(version)
        for target in history.rollback_targets(moves):
            try:
                chain.append(client.get_model_version(name, str(target)))
            except mlflow.exceptions.MlflowException:
                break  # deleted by hand: rollbacks stop there too
        return chain
    while version is not None and all(v.version != version.version for v in chain):
        chain.append(version)
        previous = version.tags.get(PREVIOUS_TAG)
        try:
            version = client.get_model_version(name, previous) if previous else None
        except mlflow.exceptions.MlflowException:
            version = None  # deleted by hand: the chain ends there
    return chain


def protect_registered(client: MlflowClient) -> list[str]:
    """Restore the runs behind every registered model version if someone deleted them.

    ``mlflow gc`` would destroy them, and with them what ``make report`` and ``make rollback``
    read. Returns the protected run ids.
    """
    protected = []
    for version in client.search_model_versions(max_results=10000):
        if not version.run_id:
            continue
        try:
            run = client.get_run(version.run_id)
        except mlflow.exceptions.MlflowException:
            continue  # already collected before this rule existed
        if run.info.lifecycle_stage == "deleted":
            client.restore_run(version.run_id)
            log.warning(
                "clean-runs: restored run %s of %s version %s, which was deleted",
                version.run_id,
                version.name,
                version.version,
            )
        protected.append(version.run_id)
    return sorted(set(protected))


def _delete_logged_models(client: MlflowClient, experiment_id: str, run_id: str) -> list[str]:
    """Mark the logged models of a collected run deleted, so ``mlflow gc`` takes them too."""
    models = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=100
    )
    for model in models:
        client.delete_logged_model(model.model_id)
    return [m.model_id for m in models]


def stale_backups(backups: Path, client: MlflowClient) -> list[Path]:
    """Backups nothing can resume: their run is gone or ended other than KILLED.

    A backup whose owner process still runs (a live training) is never stale.
    """
    stale = []
    for folder in sorted(backups.glob("train-*")) if backups.is_dir() else []:
        held_by = (read_claim(folder) or {}).get("owner")
        try:
            if held_by is not None and owner.is_alive(held_by):
                continue
        except (TypeError, KeyError):
            pass  # no usable owner recorded (an older layout): judged by its run alone
        try:
            run = client.get_run((read_state(folder) or {})["run_id"])
            if run.info.status in ("KILLED", "RUNNING") and run.info.lifecycle_stage == "active":
                continue
        except (OSError, ValueError, KeyError, mlflow.exceptions.MlflowException):
            pass
        stale.append(folder)
    return stale


def clean_runs(
    tracking_uri: str, model_name: str, alias: str, backups: Path, dvc: bool = True
) -> dict[str, Any]:
    """Garbage-collect deleted MLflow runs, stale backups and (optionally) DVC leftovers.

    Never collected: the runs behind any registered model version, the DVC experiments of the
    champion and of every earlier champion it can be rolled back to, queued or running DVC
    experiments, and live trainings' backups.

    Returns:
        What was removed and what was protected.
    """
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    protected = protect_registered(client)
    chain = champion_chain(client, model_name, alias)
    deleted, models = [], []
    for exp in client.search_experiments(view_type=ViewType.ALL):
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY):
            deleted.append(run.info.run_id)
            models += _delete_logged_models(client, exp.experiment_id, run.info.run_id)
    bin_dir = Path(sys.executable).parent
    env_uri = {"MLFLOW_TRACKING_URI": tracking_uri}
    if deleted:
        subprocess.run(
            [str(bin_dir / "mlflow"), "gc", "--backend-store-uri", tracking_uri],
            check=True,
            env={**os.environ, **env_uri},
            capture_output=True,
        )
    removed_backups = [str(p) for p in stale_backups(backups, client)]
    for path in removed_backups:
        shutil.rmtree(path, ignore_errors=True)
    removed_exps: list[str] = []
    if dvc and (project_root() / ".dvc").is_dir():
        keep = {client.get_run(v.run_id).data.tags.get("dvc_exp_name") for v in chain}
        removed_exps = _dvc_clean(bin_dir / "dvc", keep - {None})
    result = {
        "protected_run": chain[0].run_id if chain else None,
        "protected_runs": protected,
        "gc_runs": deleted,
        "gc_logged_models": models,
        "removed_backups": removed_backups,
        "removed_dvc_experiments": removed_exps,
    }
    log.info("clean-runs: %s", result)
    return result


def _dvc(dvc: Path, *args: str) -> str:
    return subprocess.run(
        [str(dvc), *args], cwd=project_root(), capture_output=True, text=True, check=True
    ).stdout


def _dvc_clean(dvc: Path, keep: set[str]) -> list[str]:
    active = [
        line
        for line in _dvc(dvc, "queue", "status").splitlines()
        if any(word in line.split() for word in ("Queued", "Running"))
    ]
    if active:
        # Removing experiments or cache now could take what a queued or running one needs.
        log.info("clean-runs: %d DVC experiments queued or running: DVC left alone", len(active))
        return []
    listing = _dvc(dvc, "exp", "list", "--all-commits", "--name-only").split()
    names = [n for n in listing if n not in keep]
    if names:
        _dvc(dvc, "exp", "remove", *names)
    _dvc(dvc, "exp", "clean")
    # Keep what the workspace and the remaining (champions') experiments use.
    _dvc(dvc, "gc", "--workspace", "--all-experiments", "--force")
    return names


def clean_project(
    tracking_uri: str | None, model_name: str | None, alias: str | None, dvc: bool = True
) -> dict[str, Any]:
    """``make clean-runs`` for the project's store (or ``tracking_uri``): see :func:`clean_runs`.

    The model name and alias default to ``registry.*`` of ``conf/``.
    """
    from fmnist_mlops.runtime.cli import setup_logging
    from fmnist_mlops.tracking.store import check_uri
    from fmnist_mlops.tracking.store import tracking_uri as default_uri

    setup_logging()
    if model_name is None or alias is None:
        from fmnist_mlops.config.compose import compose

        registry = compose().registry
        model_name, alias = model_name or registry.model_name, alias or registry.alias
    uri = tracking_uri or default_uri(None)
    check_uri("--tracking-uri" if tracking_uri else "the project's tracking store", uri)
    return clean_runs(uri, model_name, alias, backups_root(uri), dvc=dvc)
