"""The ``prepare`` stage: locate and verify the real Fashion-MNIST, split it, write the split."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fmnist_mlops.config.compose import validate
from fmnist_mlops.config.schema import NUM_CLASSES
from fmnist_mlops.data.idx import load_raw, locate
from fmnist_mlops.data.splits import split, split_settings, write_prepared
from fmnist_mlops.runtime.folders import writable_dir
from fmnist_mlops.runtime.paths import resolve

log = logging.getLogger(__name__)


def prepare(cfg: Any) -> dict[str, Any]:
    """Locate, verify, split and write the data (the ``prepare`` stage).

    Returns:
        The metadata written to ``meta.json``: source, hashes, counts and split settings.
    """
    config = validate(cfg)
    source, files = locate(config.data)
    log.info("prepare: reading IDX files from %s", source)
    arrays, hashes = load_raw(files)
    splits = split(arrays, config.data)
    meta = {
        "source": source,
        "sha256": hashes,
        "counts": {name: int(len(y)) for name, (_, y) in splits.items()},
        "class_counts": {
            name: np.bincount(y, minlength=NUM_CLASSES).tolist() for name, (_, y) in splits.items()
        },
        **split_settings(config.data),
    }
    out = resolve(config.paths.prepared)
    writable_dir("paths.prepared", out.parent)
    write_prepared(out, splits, meta)
    log.info("prepare: wrote %s %s", out, meta["counts"])
    return meta
