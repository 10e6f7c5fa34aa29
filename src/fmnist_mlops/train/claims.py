"""Who owns a backup folder (``claim.json``): resume a dead owner's run, never a live one's.

Backups live outside DVC outputs, one folder per run under ``<store root>/.backups/``, each
recording its owner process (host, pid, start time), the hash of the config and the data, and
the output folder: the same command resumes the most recent interrupted run with those settings
whose owner is gone, and never touches a live run's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmnist_mlops.runtime import owner
from fmnist_mlops.runtime.errors import ConfigError
from fmnist_mlops.runtime.files import file_lock, write_json
from fmnist_mlops.train.backup import (
    CLAIM_FILE,
    STATE_FILE,
    ResumeState,
    _discard,
    load,
    read_state,
)

log = logging.getLogger(__name__)


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
            run_id = (read_state(folder) or {}).get("run_id", run_id)
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
        root: Where the backups of this tracking store live (``paths.backups_root``).
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
    raw = read_claim(folder)
    if raw is None:
        return
    _write_claim(folder, raw["hash"], raw["out"], raw.get("run_id"), held=False)


def read_claim(folder: Path) -> dict[str, Any] | None:
    """A folder's claim as written (None: missing or unreadable)."""
    try:
        return json.loads((folder / CLAIM_FILE).read_text())
    except (OSError, ValueError):
        return None
