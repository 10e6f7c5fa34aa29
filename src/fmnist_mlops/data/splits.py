"""The split: train/val/test arrays made from the raw files, written and read as prepared files.

``prepare`` writes them with a ``meta.json`` (digests, counts, the split settings); every later
stage reads them back and checks they were made with the settings it is configured with.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_mlops.config.schema import Config, DataCfg
from fmnist_mlops.runtime.errors import DataError
from fmnist_mlops.runtime.paths import resolve

SPLITS = ("train", "val", "test")


@dataclass
class Splits:
    """Prepared uint8 arrays: images (N, 28, 28) with raw 0-255 pixels, labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict[str, Any]


def _stratified_subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int):
    if n is None or n >= len(y):
        return x, y
    from sklearn.model_selection import train_test_split

    x_sub, _, y_sub, _ = train_test_split(x, y, train_size=n, stratify=y, random_state=seed)
    return x_sub, y_sub


def split(arrays: dict[str, np.ndarray], data_cfg: DataCfg) -> dict[str, tuple[np.ndarray, ...]]:
    """Stratified train/val split of the training set; optional stratified subsets.

    The test set is never split or shuffled: only subset when ``data.max_test`` is set.
    """
    from sklearn.model_selection import train_test_split

    seed = data_cfg.split_seed
    x_tr, x_val, y_tr, y_val = train_test_split(
        arrays["train-images"],
        arrays["train-labels"],
        test_size=data_cfg.val_split,
        stratify=arrays["train-labels"],
        random_state=seed,
    )
    out = {
        "train": _stratified_subset(x_tr, y_tr, data_cfg.max_train, seed),
        "val": _stratified_subset(x_val, y_val, data_cfg.max_val, seed),
        "test": _stratified_subset(
            arrays["test-images"], arrays["test-labels"], data_cfg.max_test, seed
        ),
    }
    return out


def write_prepared(out: Path, splits: dict[str, tuple[np.ndarray, ...]], meta: dict) -> None:
    """Write ``{train,val,test}.npz`` and ``meta.json`` atomically (temp folder, then rename).

    A failure anywhere leaves a previous ``out`` exactly as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; prepared data is not secret
    try:
        for name, (x, y) in splits.items():
            np.savez(tmp / f"{name}.npz", x=x.astype(np.uint8), y=y.astype(np.uint8))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_prepared(folder: Path) -> Splits:
    """Load what :func:`write_prepared` wrote.

    Raises:
        DataError: The folder or one of its files is missing.
    """
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"paths.prepared={folder} holds no prepared data: run `dvc repro prepare` "
            f"(or `python src/prepare.py`) first"
        )
    meta = json.loads(meta_path.read_text())
    arrays = {}
    for name in SPLITS:
        with np.load(folder / f"{name}.npz") as npz:
            arrays[name] = (npz["x"], npz["y"])
    return Splits(*arrays["train"], *arrays["val"], *arrays["test"], meta=meta)


def split_sha256(folder: Path) -> dict[str, str]:
    """SHA-256 of each prepared split's arrays ({"train": ..., "val": ..., "test": ...}).

    Over the arrays (each key's name, dtype, shape and bytes, keys sorted), not the ``.npz``
    file, whose zip headers carry the time it was written.
    """
    digests = {}
    for path in sorted(Path(folder).glob("*.npz")):
        digest = hashlib.sha256()
        with np.load(path) as npz:
            for key in sorted(npz.files):
                array = np.ascontiguousarray(npz[key])
                digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
                digest.update(array.tobytes())
        digests[path.stem] = digest.hexdigest()
    return digests


def split_settings(data_cfg: DataCfg) -> dict[str, Any]:
    """What ``meta.json`` records of the split, and what a stage checks it against."""
    return {
        "val_split": data_cfg.val_split,
        "split_seed": data_cfg.split_seed,
        "max": {"train": data_cfg.max_train, "val": data_cfg.max_val, "test": data_cfg.max_test},
    }


def check_split(data_cfg: DataCfg, meta: dict[str, Any], folder: Path) -> None:
    """Refuse prepared data that was split with other settings than this config asks for."""
    wanted = split_settings(data_cfg)
    found = {k: meta.get(k) for k in wanted}
    if found != wanted:
        raise DataError(
            f"prepared data in {folder} was made with {found}, this config asks for {wanted}: "
            "prepare that split into a folder of its own (`python src/prepare.py <the same "
            "data.* overrides> paths.prepared=<folder>`) and name it here too; `dvc repro` "
            "remakes data/prepared from params.yaml"
        )


def stage_split(config: Config) -> tuple[Path, Splits]:
    """The prepared split every stage after ``prepare`` reads, checked against ``config``.

    ``paths.prepared``, loaded, and refused in one line if it was made with other ``data.*``
    settings than ``config``'s.

    Returns:
        The folder and the splits.
    """
    prepared = resolve(config.paths.prepared)
    splits = load_prepared(prepared)
    check_split(config.data, splits.meta, prepared)
    return prepared, splits
