"""The pipeline's work in one bare Python process: no DVC, no MLflow, no files but a checkpoint.

Same config (``params.yaml``), same code paths as ``prepare`` -> ``train`` -> ``evaluate``:
read and verify the IDX files, split, fit with the same callbacks, score the test set. It is the
yardstick for what DVC and MLflow add (``make bench``, section 2). Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from measure import ROOT

STARTED = time.monotonic()


def main() -> int:
    from omegaconf import OmegaConf

    from fmnist_mlops.config.compose import validate
    from fmnist_mlops.data.idx import load_raw, locate
    from fmnist_mlops.data.splits import Splits, split
    from fmnist_mlops.evaluate.scoring import assess
    from fmnist_mlops.runtime.cli import skip_exit_collection
    from fmnist_mlops.train.fitting import fit

    skip_exit_collection()  # as every stage does: a fair yardstick
    config = validate(OmegaConf.load(ROOT / "params.yaml"))
    _, files = locate(config.data)
    arrays, _ = load_raw(files)
    parts = split(arrays, config.data)
    splits = Splits(*parts["train"], *parts["val"], *parts["test"], meta={})
    with tempfile.TemporaryDirectory() as tmp:
        model, _, _ = fit(config.train, config.model, config.seed, splits, Path(tmp))
    test = assess(model, splits.x_test, splits.y_test)
    print(json.dumps({"seconds": time.monotonic() - STARTED, "test_accuracy": test.accuracy}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
