"""Resume an interrupted training from its last finished epoch, in the same MLflow run.

Keras' ``BackupAndRestore`` keeps only weights and the epoch. Here each finished epoch saves
the whole model *with its optimizer state*, the best model so far, and the state of early
stopping, the best-only checkpoint and the learning-rate schedule, so that a resumed run
behaves as if it had never stopped (a worse first resumed epoch cannot overwrite the best
checkpoint). Backups live outside DVC outputs, one folder per run under
``<store root>/.backups/``, each recording its owner process (host, pid, start time), the hash
of the config and the data, and the output folder: the same command resumes the most recent
interrupted run with those settings whose owner is gone, and never touches a live run's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fmnist_mlops.runtime import owner
from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.runtime.paths import file_lock, sqlite_dir, store_root, write_json

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
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


def backups_root(uri: str) -> Path:
    """Where backups live for the store at ``uri``.

    Beside a SQLite database (so each store has its own backups), else in the repository.
    """
    return (sqlite_dir(uri) or store_root()) / ".backups"


CLAIM_FILE = "claim.json"


@dataclass(frozen=True)
class Claim:
    """A training's backup folder and who owns it: one folder per run, never shared."""

    folder: Path
    owner: dict[str, Any] | None
    hash: str
    out: str | None
    run_id: str | None

    def alive(self) -> bool:
        """Whether the owning process still runs (another host's owner counts as alive).

        A released claim (its training ended without finishing) has no owner.
        """
        return self.owner is not None and owner.is_alive(self.owner)

    def updated(self) -> float:
        """When this run last finished an epoch (or was claimed)."""
        state = self.folder / STATE_FILE
        return (state if state.exists() else self.folder / CLAIM_FILE).stat().st_mtime


def _read_claims(root: Path) -> list[Claim]:
    claims = []
    for folder in sorted(root.glob("train-*")) if root.is_dir() else []:
        try:
            raw = json.loads((folder / CLAIM_FILE).read_text())
            run_id = raw.get("run_id")
            if (folder / STATE_FILE).exists():
                run_id = json.loads((folder / STATE_FILE).read_text()).get("run_id", run_id)
            claims.append(Claim(folder, raw["owner"], raw["hash"], raw["out"], run_id))
        except (OSError, ValueError, KeyError):
            continue  # a backup of an older layout, or half-written: housekeeping's business
    return claims


def _write_claim(
    folder: Path, config_hash: str, out: str | None, run_id: str | None, held: bool = True
) -> None:
    record = {
        "owner": owner.current() if held else None,
        "hash": config_hash,
        "out": out,
        "run_id": run_id,
    }
    write_json(folder / CLAIM_FILE, record)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    with file_lock(root / ".claims.lock"):
        yield


def claim(
    root: Path,
    config_hash: str,
    out: str | None,
    out_setting: str | None,
    run_known: Callable[[str], bool],
) -> tuple[Path, ResumeState | None]:
    """Take the backup folder this training owns: an interrupted run's, or a new one.

    Under a lock on ``root``: a run with an explicit output folder (``out``) that a live run
    already writes to is refused; otherwise the most recent interrupted run with the same
    settings and output folder whose owner is gone (and whose MLflow run still exists) is
    taken over, else a new folder is made. A live run is never taken over.

    Args:
        root: Where the backups of this tracking store live (:func:`backups_root`).
        config_hash: :func:`config_hash` of this training.
        out: The resolved ``paths.out``, or None for an ad-hoc run (a scratch folder).
        out_setting: ``paths.out`` as the user gave it, for the refusal message.
        run_known: Whether a run id belongs to the current tracking store.

    Returns:
        The folder, and the backup to resume from (None: start a new run).

    Raises:
        ConfigError: ``out`` is in use by a live run.
    """
    with _locked(root):
        claims = _read_claims(root)
        if out is not None:
            busy = next((c for c in claims if c.out == out and c.alive()), None)
            if busy is not None:
                raise ConfigError(
                    f"paths.out={out_setting} is in use by run {busy.run_id or '(starting)'} "
                    f"of {owner.describe(busy.owner)}: wait for it, stop it, or give another "
                    "paths.out"
                )
        for dead in (c for c in claims if not c.alive() and not (c.folder / STATE_FILE).exists()):
            shutil.rmtree(dead.folder, ignore_errors=True)  # no epoch finished: nothing to resume
        same = [c for c in claims if c.hash == config_hash and c.out == out]
        live = [c for c in same if c.alive()]
        dead = sorted(
            (c for c in same if not c.alive() and (c.folder / STATE_FILE).exists()),
            key=Claim.updated,
            reverse=True,
        )
        for candidate in dead:
            state = load(candidate.folder, config_hash)
            if state is None:
                continue
            if not run_known(state.run_id):
                _discard(candidate.folder, f"its run {state.run_id} is not in this store")
                continue
            _write_claim(candidate.folder, config_hash, out, state.run_id)
            others = [c.run_id for c in dead if c is not candidate]
            log.info(
                "train: %d interrupted run(s) with these settings%s; resuming the most recent",
                len(dead),
                f" (also {', '.join(map(str, others))})" if others else "",
            )
            return candidate.folder, state
        for c in live:
            log.info(
                "train: run %s with these settings is live (%s): starting a new run",
                c.run_id or "(starting)",
                owner.describe(c.owner),
            )
        folder = Path(tempfile.mkdtemp(dir=root, prefix=f"train-{time.strftime('%Y%m%d-%H%M%S')}-"))
        _write_claim(folder, config_hash, out, None)
        return folder, None


def name_run(folder: Path, run_id: str) -> None:
    """Record the MLflow run a claimed folder belongs to (once the run exists)."""
    raw = json.loads((folder / CLAIM_FILE).read_text())
    _write_claim(folder, raw["hash"], raw["out"], run_id)


def release(folder: Path) -> None:
    """Give up a claim whose training ended unfinished: the same command may resume it now.

    A process that lives on after its training stopped (a sweep, a test) must not keep the
    run looking live. A folder already cleared (finished, diverged) is left alone.
    """
    try:
        raw = json.loads((folder / CLAIM_FILE).read_text())
    except (OSError, ValueError):
        return
    _write_claim(folder, raw["hash"], raw["out"], raw.get("run_id"), held=False)


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
    state_path = folder / STATE_FILE
    if not state_path.exists():
        return None, None
    try:
        state = ResumeState(folder=folder, **json.loads(state_path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        return None, f"unreadable {STATE_FILE} ({exc.__class__.__name__})"
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
    try:
        return json.loads((folder / STATE_FILE).read_text()).get("files", {})
    except (OSError, ValueError):
        return {}


def as_number(value: Any) -> float | None:
    """A callback's number (NumPy or Python) as a JSON-able float, or None."""
    return None if value is None else float(value)
