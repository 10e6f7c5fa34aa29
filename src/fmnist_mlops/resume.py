"""Resume an interrupted training from its last finished epoch, in the same MLflow run.

Keras' ``BackupAndRestore`` keeps only weights and the epoch. Here each finished epoch saves
the whole model *with its optimizer state*, the best model so far, and the state of early
stopping, the best-only checkpoint and the learning-rate schedule, so that a resumed run
behaves as if it had never stopped (a worse first resumed epoch cannot overwrite the best
checkpoint). Backups live outside DVC outputs, under ``<store root>/.backups/<slot>/``, and
carry a hash of the config and the data: a backup made for other settings is discarded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.paths import store_root

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
# Settings that change where files go or how much is printed, not what is trained.
_NOT_HASHED = ("paths", "run_id", "train.verbose", "mlflow.tracking_uri")


def config_hash(cfg: DictConfig, data_meta: dict[str, Any]) -> str:
    """Hash what determines a training: the config (minus output paths) and the data."""
    conf = OmegaConf.to_container(cfg, resolve=True)
    for key in _NOT_HASHED:
        node, *rest = key.split(".")
        if rest:
            conf.get(node, {}).pop(rest[0], None)
        else:
            conf.pop(node, None)
    data = {k: data_meta.get(k) for k in ("sha256", "counts", "val_split", "split_seed", "max")}
    text = json.dumps({"config": conf, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def backups_root(uri: str) -> Path:
    """Where backups live for the store at ``uri``.

    Beside a SQLite database (so each store has its own backups), else in the repository.
    """
    from fmnist_mlops.tracking import sqlite_dir

    return (sqlite_dir(uri) or store_root()) / ".backups"


def backup_dir(cfg: DictConfig) -> Path:
    """One backup slot for the DVC pipeline (``paths.out`` set), one for ad-hoc runs."""
    from fmnist_mlops.tracking import tracking_uri

    slot = "pipeline" if cfg.paths.out is not None else "adhoc"
    return backups_root(tracking_uri(cfg)) / f"train-{slot}"


def _sha256(path: Path) -> str:
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

    def model(self) -> keras.Model:
        """The model after the last finished epoch, optimizer and dropout RNG state included."""
        model = keras.saving.load_model(str(self.folder / self.files["last"]), safe_mode=True)
        set_rng_state(model, self.rng)
        return model

    def best_model_file(self) -> Path:
        """The best model so far (what the best-only checkpoint held)."""
        return self.folder / self.files["best"]


def _seed_states(model: keras.Model) -> list[Any]:
    # Dropout's random masks come from these counters; in model order, since their names
    # depend on what else the process has built.
    return [v for v in model.variables if v.name == "seed_generator_state"]


def rng_state(model: keras.Model) -> list[list[int]]:
    """The model's seed-generator states, which Keras does not save in ``.keras`` files."""
    return [np.asarray(v.numpy()).tolist() for v in _seed_states(model)]


def set_rng_state(model: keras.Model, state: list[list[int]]) -> None:
    """Put back what :func:`rng_state` returned (a no-op for an empty state)."""
    if not state:
        return
    variables = _seed_states(model)
    if len(variables) != len(state):
        raise ValueError(f"{len(state)} saved seed states for {len(variables)} in the model")
    for variable, value in zip(variables, state, strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))


def load(folder: Path, expected_hash: str) -> ResumeState | None:
    """Return the backup in ``folder`` if it is intact and made for ``expected_hash``.

    A backup for other settings, or one whose files are missing or do not match the
    checksums recorded with it, is reported and deleted: training then starts afresh.
    """
    state_path = folder / STATE_FILE
    if not state_path.exists():
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)  # an epoch never finished: nothing to keep
        return None
    try:
        raw = json.loads(state_path.read_text())
        state = ResumeState(folder=folder, **raw)
    except (ValueError, TypeError) as exc:
        return _discard(folder, f"unreadable {STATE_FILE} ({exc.__class__.__name__})")
    if state.hash != expected_hash:
        return _discard(folder, f"made for other settings (hash {state.hash}, now {expected_hash})")
    for role in ("last", "best"):
        name = state.files.get(role)
        path = folder / name if name else None
        if path is None or not path.is_file() or _sha256(path) != state.sha256.get(name):
            return _discard(
                folder, f"{role} model {name} is missing or corrupt (checksum mismatch)"
            )
    return state


def _discard(folder: Path, why: str) -> None:
    log.warning("train: discarding backup %s: %s; training from scratch", folder, why)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def clear(folder: Path) -> None:
    """Delete a backup (after a finished or a diverged training)."""
    shutil.rmtree(folder, ignore_errors=True)


class EpochBackup(keras.callbacks.Callback):
    """After each epoch: save model + optimizer, best model, callback states, history.

    Must come after the checkpoint, early-stopping and LR callbacks in the callback list so it
    sees their updated state, and before the MLflow logger: an epoch is either in the backup
    or re-run, and epochs in the backup but missing from MLflow are logged on resume.
    """

    def __init__(
        self,
        folder: Path,
        run_id: str,
        config_hash: str,
        checkpoint_file: Path,
        early: keras.callbacks.EarlyStopping,
        checkpoint: keras.callbacks.ModelCheckpoint,
        plateau: keras.callbacks.ReduceLROnPlateau | None,
        history: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.folder, self.run_id, self.hash = folder, run_id, config_hash
        self.checkpoint_file = checkpoint_file
        self.early, self.checkpoint, self.plateau = early, checkpoint, plateau
        self.history = {k: list(v) for k, v in (history or {}).items()}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # noqa: D102
        logs = logs or {}
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        self.folder.mkdir(parents=True, exist_ok=True)
        # New file names every epoch, and state.json switched atomically last: a kill at any
        # moment leaves the previous epoch's consistent set (files and their checksums).
        previous = _read_files(self.folder)
        last = f"last-{epoch:04d}.keras"
        self.model.save(self.folder / last)
        best = previous.get("best")
        if self.checkpoint_file.exists() and (self.early.best_epoch == epoch or best is None):
            best = f"best-{epoch:04d}.keras"
            shutil.copyfile(self.checkpoint_file, self.folder / best)
        state = {
            "run_id": self.run_id,
            "hash": self.hash,
            "epoch": epoch,
            "stopped": bool(self.model.stop_training),
            "history": self.history,
            "early": {
                "wait": self.early.wait,
                "best": _num(self.early.best),
                "best_epoch": self.early.best_epoch,
            },
            "checkpoint_best": _num(self.checkpoint.best),
            "plateau": None
            if self.plateau is None
            else {
                "wait": self.plateau.wait,
                "best": _num(self.plateau.best),
                "cooldown_counter": self.plateau.cooldown_counter,
            },
            "files": {"last": last, "best": best},
            "rng": rng_state(self.model),
            "sha256": {name: _sha256(self.folder / name) for name in (last, best) if name},
        }
        tmp_state = self.folder / f".{STATE_FILE}.tmp"
        tmp_state.write_text(json.dumps(state))
        os.replace(tmp_state, self.folder / STATE_FILE)
        keep = {STATE_FILE, last, best}
        for path in self.folder.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _read_files(folder: Path) -> dict[str, str]:
    try:
        return json.loads((folder / STATE_FILE).read_text()).get("files", {})
    except (OSError, ValueError):
        return {}


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


class RestoredEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters and best weights survive a restart."""

    def __init__(
        self, *args: Any, restored: dict[str, Any] | None = None, best_weights=None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._restored, self._restored_weights = restored, best_weights

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: D102
        super().on_train_begin(logs)
        if self._restored:
            self.wait = int(self._restored["wait"])
            self.best = self._restored["best"]
            self.best_epoch = int(self._restored["best_epoch"])
            self.best_weights = self._restored_weights


class RestoredReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a restart (the rate is in the optimizer)."""

    def __init__(self, *args: Any, restored: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._restored = restored

    def on_train_begin(self, logs: dict | None = None) -> None:  # noqa: D102
        super().on_train_begin(logs)
        if self._restored:
            self.wait = int(self._restored["wait"])
            self.best = self._restored["best"]
            self.cooldown_counter = int(self._restored["cooldown_counter"])
