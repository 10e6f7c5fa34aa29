"""A training's backup: one folder per run, what it holds, one writer and one reader.

Keras' ``BackupAndRestore`` keeps only weights and the epoch. Here each finished epoch saves
the whole model *with its optimizer state*, the best model so far, and the state of early
stopping, the best-only checkpoint and the learning-rate schedule (``state.json``, written by
:func:`write_state` only, read by :func:`read_state` only), so that a resumed run behaves as if
it had never stopped. Who owns a folder is :mod:`fmnist_mlops.train.claims`' business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.runtime.files import write_json

log = logging.getLogger(__name__)

# What a backup folder holds: its state, the two model files it names, and its claim.
STATE_FILE = "state.json"
CLAIM_FILE = "claim.json"

# Settings that change where files go or how much is printed, not what is trained.
_NOT_HASHED = (
    "paths",
    "run_id",
    "train.verbose",
    "mlflow.tracking_uri",
    "mlflow.http_max_retries",
    "mlflow.http_backoff_factor",
    "mlflow.http_timeout_s",
    "mlflow.probe_timeout_s",
    "mlflow.system_metrics",
)


def training_settings(cfg: DictConfig) -> dict[str, Any]:
    """What of the config determines a training: all of it but paths, verbosity and store."""
    conf = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_HASHED:
        node, *rest = key.split(".")
        if rest:
            conf.get(node, {}).pop(rest[0], None)
        else:
            conf.pop(node, None)
    return conf


def config_hash(cfg: DictConfig, data_meta: dict[str, Any]) -> str:
    """Hash what determines a training: the config (minus output paths) and the data."""
    conf = training_settings(cfg)
    data = {k: data_meta.get(k) for k in ("sha256", "counts", "val_split", "split_seed", "max")}
    text = json.dumps({"config": conf, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes (backups are checked against it before a resume)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class EpochBackupSpec:
    """Where and for which run/settings :class:`EpochBackup` writes."""

    folder: Path
    run_id: str
    config_hash: str


@dataclass
class ResumeState:
    """What a resumed training needs, as saved after its last finished epoch."""

    folder: Path
    run_id: str
    hash: str
    epoch: int
    stopped: bool
    history: dict[str, list[float]]
    early: dict[str, Any]
    checkpoint_best: float | None
    plateau: dict[str, Any] | None
    files: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    rng: list[list[int]] = field(default_factory=list)

    def model(self) -> Any:
        """The model after the last finished epoch, optimizer and dropout RNG state included."""
        import keras

        model = keras.saving.load_model(str(self.folder / self.files["last"]), safe_mode=True)
        set_rng_state(model, self.rng)
        return model

    def best_model_file(self) -> Path:
        """The best model so far (what the best-only checkpoint held)."""
        return self.folder / self.files["best"]


def _seed_states(model: Any) -> list[Any]:
    # Dropout's random masks come from these counters; in model order, since their names
    # depend on what else the process has built.
    return [v for v in model.variables if v.name == "seed_generator_state"]


def rng_state(model: Any) -> list[list[int]]:
    """The model's seed-generator states, which Keras does not save in ``.keras`` files."""
    return [np.asarray(v.numpy()).tolist() for v in _seed_states(model)]


def set_rng_state(model: Any, state: list[list[int]]) -> None:
    """Put back what :func:`rng_state` returned (a no-op for an empty state)."""
    if not state:
        return
    variables = _seed_states(model)
    if len(variables) != len(state):
        raise ValueError(f"{len(state)} saved seed states for {len(variables)} in the model")
    for variable, value in zip(variables, state, strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))


def read_state(folder: Path) -> dict[str, Any] | None:
    """A backup's saved state as written (None: no epoch finished, or unreadable)."""
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_state(folder: Path, state: dict[str, Any]) -> None:
    """Record a finished epoch: checksum its model files, switch ``state.json``, tidy up.

    The model files are those ``state["files"]`` names; what the previous epoch left is
    deleted after the switch.

    New file names every epoch and the state switched last: a kill at any moment leaves the
    previous epoch's consistent set (files and their checksums).
    """
    names = [name for name in state["files"].values() if name]
    state = {**state, "sha256": {name: sha256_of(folder / name) for name in names}}
    write_json(folder / STATE_FILE, state)
    keep = {STATE_FILE, CLAIM_FILE, *names}
    for path in folder.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)


def load(folder: Path, expected_hash: str, discard: bool = True) -> ResumeState | None:
    """Return the backup in ``folder`` if it is intact and made for ``expected_hash``.

    A backup for other settings, or one whose files are missing or do not match the
    checksums recorded with it, is reported and deleted: training then starts afresh.
    With ``discard=False`` (a worker reading the chief's backup) nothing is deleted: such a
    backup, or none at all, raises :class:`ConfigError` instead.
    """
    state, problem = _inspect(folder, expected_hash)
    if state is not None and problem is None:
        return state
    if not discard:
        raise ConfigError(
            f"the chief resumes from {folder}, which this worker cannot use "
            f"({problem or 'no backup there'}): the backups must be on storage every worker "
            "shares, and every worker started with the same arguments"
        )
    if problem is None:  # an epoch never finished: nothing to keep
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return _discard(folder, problem)


def _inspect(folder: Path, expected_hash: str) -> tuple[ResumeState | None, str | None]:
    """A backup's saved state, if any, and why it cannot be resumed (None: it can)."""
    if not (folder / STATE_FILE).exists():
        return None, None
    raw = read_state(folder)
    try:
        state = ResumeState(folder=folder, **(raw if raw is not None else {}))
    except TypeError as exc:
        return None, f"unreadable {STATE_FILE} ({exc.__class__.__name__})"
    if raw is None:
        return None, f"unreadable {STATE_FILE}"
    if state.hash != expected_hash:
        return state, f"made for other settings (hash {state.hash}, now {expected_hash})"
    for role in ("last", "best"):
        name = state.files.get(role)
        path = folder / name if name else None
        if path is None or not path.is_file() or sha256_of(path) != state.sha256.get(name):
            return state, f"{role} model {name} is missing or corrupt (checksum mismatch)"
    return state, None


def _discard(folder: Path, why: str) -> None:
    log.warning("train: discarding backup %s: %s; training from scratch", folder, why)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def clear(folder: Path) -> None:
    """Delete a backup (after a finished or a diverged training)."""
    shutil.rmtree(folder, ignore_errors=True)


def read_files(folder: Path) -> dict[str, str]:
    """The ``last``/``best`` file names a backup's state lists (empty if unreadable)."""
    return (read_state(folder) or {}).get("files", {})


def as_number(value: Any) -> float | None:
    """A callback's number (NumPy or Python) as a JSON-able float, or None."""
    return None if value is None else float(value)
