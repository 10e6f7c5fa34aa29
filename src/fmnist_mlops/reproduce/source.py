"""What a registered version recorded about itself, read back and checked before any work.

Everything a rebuild cannot do without (the commit, the data digests, the config, the diff of a
dirty tree) is refused in one line when missing; what it can do without (fields recorded only
since the reproduction existed) is listed in ``missing``, so the table says what was not
recorded.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from fmnist_mlops.runtime.errors import RegistryError
from fmnist_mlops.runtime.paths import MODEL_FILE
from fmnist_mlops.tracking.logged_params import CONFIG_ARTIFACT
from fmnist_mlops.tracking.runs import RAW_DIGEST_TAG
from fmnist_mlops.tracking.tags import diff_sha256
from fmnist_mlops.train import provenance
from fmnist_mlops.train.history import EPOCH_METRICS as EPOCH_KEYS
from fmnist_mlops.train.provenance import DIFF_ARTIFACT

# The best checkpoint, as the train stage logs it.
CHECKPOINT_ARTIFACT = f"checkpoints/{MODEL_FILE.name}"

# Fields recorded on training runs since `make reproduce` exists: an older version lacks them.
LATER_FIELDS = provenance.REBUILD_TAGS


@dataclass
class Source:
    """A registered version's run, as far as a rebuild needs it."""

    name: str
    version: int
    run_id: str
    experiment_id: str
    commit: str
    dirty: bool
    diff: str | None
    config_text: str
    tags: dict[str, str]
    metrics: dict[str, float]
    epochs: dict[str, list[float]]
    missing: list[str] = field(default_factory=list)

    @property
    def data_digests(self) -> dict[str, str]:
        """The raw files' digests: ``{"train-images": sha256, ...}``."""
        return _prefixed(self.tags, RAW_DIGEST_TAG)

    @property
    def split_digests(self) -> dict[str, str]:
        """Each prepared split's digest (recorded since the reproduction exists)."""
        return _prefixed(self.tags, provenance.SPLIT_DIGEST_TAG)


def _prefixed(tags: dict[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}


def resolve_version(client: MlflowClient, name: str, version: int | str):
    """The model version a number or an alias names; one line when there is none."""
    try:
        if isinstance(version, int) or str(version).isdigit():
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, str(version))
    except MlflowException:
        what = f"version {version}" if str(version).isdigit() else f"alias @{version}"
        raise RegistryError(
            f"reproduce.version={version}: {name} has no {what} "
            f"(make champion-history lists the versions that held the alias)"
        ) from None


def read_source(client: MlflowClient, name: str, version: int | str, repo: Path) -> Source:
    """Read what version ``version`` of ``name`` recorded; refuse what cannot be rebuilt.

    Raises:
        RegistryError: No such version, its run is gone, or it lacks the commit, the data
            digests or the config; trained from a dirty tree without a recorded diff (or one
            that does not match its digest); or ``repo`` no longer has its commit.
    """
    mv = resolve_version(client, name, version)
    where = f"{name} version {mv.version} (run {mv.run_id})"
    try:
        run = client.get_run(mv.run_id)
    except MlflowException:
        raise RegistryError(
            f"{where}: its run is gone from the store: nothing to rebuild"
        ) from None
    tags = dict(run.data.tags)
    needed = [] if tags.get("git_commit") else ["git_commit"]
    if not _prefixed(tags, RAW_DIGEST_TAG):
        needed.append(f"{RAW_DIGEST_TAG}*")
    config_text = _artifact_text(mv.run_id, CONFIG_ARTIFACT)
    if config_text is None:
        needed.append(CONFIG_ARTIFACT)
    if needed:
        raise RegistryError(f"{where} did not record {', '.join(needed)}: it cannot be rebuilt")
    commit, dirty = tags["git_commit"], tags.get("git_dirty") == "true"
    diff = _artifact_text(mv.run_id, DIFF_ARTIFACT) if dirty else None
    if dirty and diff is None:
        raise RegistryError(
            f"{where} was trained from a tree with uncommitted changes and did not record "
            f"them ({DIFF_ARTIFACT}; recorded since make reproduce exists): it cannot be rebuilt"
        )
    if dirty and tags.get("git_diff_sha256") and diff_sha256(diff) != tags["git_diff_sha256"]:
        raise RegistryError(
            f"{where}: {DIFF_ARTIFACT} does not match its git_diff_sha256 tag: not applied"
        )
    workers = int(tags.get("distribute.workers", "1") or 1)
    if workers > 1:
        raise RegistryError(
            f"{where} was trained by {workers} workers (train.distribute=multi_worker): "
            f"make reproduce rebuilds single-process trainings only"
        )
    if not has_commit(repo, commit):
        raise RegistryError(
            f"{where} was trained at commit {commit}, which this repository does not have "
            f"(fetch it, e.g. `git fetch origin {commit}`, and run again)"
        )
    metrics = dict(run.data.metrics)
    return Source(
        name=name,
        version=int(mv.version),
        run_id=mv.run_id,
        experiment_id=run.info.experiment_id,
        commit=commit,
        dirty=dirty,
        diff=diff,
        config_text=config_text,
        tags=tags,
        metrics=metrics,
        epochs=epoch_metrics(client, mv.run_id),
        missing=[k for k in LATER_FIELDS if k not in tags],
    )


def epoch_metrics(client: MlflowClient, run_id: str) -> dict[str, list[float]]:
    """Each per-epoch metric's values by epoch (the last value logged at a step wins)."""
    found: dict[str, list[float]] = {}
    for key in EPOCH_KEYS:
        by_step: dict[int, float] = {}
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            by_step[m.step] = m.value
        found[key] = [by_step[s] for s in sorted(by_step)]
    return found


def has_commit(repo: Path, commit: str) -> bool:
    """Whether the git repository at ``repo`` has ``commit``."""
    done = subprocess.run(
        ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo, capture_output=True
    )
    return done.returncode == 0


def _artifact_text(run_id: str, path: str) -> str | None:
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")
    except (MlflowException, OSError):
        return None


def checkpoint(run_id: str, dest: Path) -> Path:
    """Download the run's best checkpoint (``checkpoints/model.keras``) into ``dest``."""
    return Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(dest)
        )
    )
