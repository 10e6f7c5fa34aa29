"""``make clean-runs``: remove what old experiments leave, never the champion or its run."""

from __future__ import annotations

import argparse
import json
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

from fmnist_mlops.paths import project_root
from fmnist_mlops.registry import current_champion
from fmnist_mlops.resume import backups_root

log = logging.getLogger(__name__)


def protect_champion(client: MlflowClient, name: str, alias: str) -> str | None:
    """Restore the champion's run if someone deleted it (``mlflow gc`` would destroy it)."""
    champ = current_champion(client, name, alias)
    if champ is None or not champ.run_id:
        return None
    if client.get_run(champ.run_id).info.lifecycle_stage == "deleted":
        client.restore_run(champ.run_id)
        log.warning("clean-runs: restored the champion's run %s, which was deleted", champ.run_id)
    return champ.run_id


def stale_backups(backups: Path, client: MlflowClient) -> list[Path]:
    """Backups whose run is gone or has ended other than KILLED (nothing left to resume)."""
    stale = []
    for folder in sorted(backups.glob("train-*")) if backups.is_dir() else []:
        try:
            run_id = json.loads((folder / "state.json").read_text())["run_id"]
            run = client.get_run(run_id)
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

    Returns:
        What was removed and which run was protected.
    """
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    protected = protect_champion(client, model_name, alias)
    deleted = [
        r.info.run_id
        for exp in client.search_experiments(view_type=ViewType.ALL)
        for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    ]
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
        removed_exps = _dvc_clean(bin_dir / "dvc", client, protected)
    result = {
        "protected_run": protected,
        "gc_runs": deleted,
        "removed_backups": removed_backups,
        "removed_dvc_experiments": removed_exps,
    }
    log.info("clean-runs: %s", result)
    return result


def _dvc_clean(dvc: Path, client: MlflowClient, protected: str | None) -> list[str]:
    keep = None
    if protected:
        keep = client.get_run(protected).data.tags.get("dvc_exp_name")
    listing = subprocess.run(
        [str(dvc), "exp", "list", "--all-commits", "--name-only"],
        cwd=project_root(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = [n for n in listing if n != keep]
    if names:
        subprocess.run(
            [str(dvc), "exp", "remove", *names], cwd=project_root(), check=True, capture_output=True
        )
    subprocess.run([str(dvc), "exp", "clean"], cwd=project_root(), check=True, capture_output=True)
    # Keep what the workspace and the remaining (champion's) experiment use.
    subprocess.run(
        [str(dvc), "gc", "--workspace", "--all-experiments", "--force"],
        cwd=project_root(),
        check=True,
        capture_output=True,
    )
    return names


def main(argv: list[str] | None = None) -> int:
    """Command line for ``make clean-runs``."""
    from fmnist_mlops.cli import setup_logging
    from fmnist_mlops.tracking import tracking_uri

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--model-name", default="fashion-mnist-cnn")
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--no-dvc", action="store_true", help="leave DVC experiments and cache")
    args = parser.parse_args(argv)
    setup_logging()
    uri = args.tracking_uri or tracking_uri(None)
    result = clean_runs(uri, args.model_name, args.alias, backups_root(uri), dvc=not args.no_dvc)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
