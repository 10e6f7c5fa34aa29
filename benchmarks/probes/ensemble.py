"""Validation and test accuracy of saved models alone and of their averaged softmax outputs.

Usage: python benchmarks/probes/ensemble.py PREPARED_DIR MODEL_FILE MODEL_FILE [MODEL_FILE ...]
Prints one JSON line per model and per subset of two or more models (the ensemble: the mean of
the members' probabilities), with each one's validation and test accuracy. Measures what
averaging independently trained networks would give before a recipe is built on it.
"""

import itertools
import json
import sys
from pathlib import Path

import keras
import numpy as np

from fmnist_mlops.data.splits import load_prepared


def main(prepared: str, *model_files: str) -> None:
    """Score every model, then every ensemble of two or more, on validation and test."""
    splits = load_prepared(Path(prepared))
    probs: dict[str, dict[str, np.ndarray]] = {}
    for model_file in model_files:
        network = keras.saving.load_model(model_file, compile=False)
        probs[model_file] = {
            split: network.predict(
                getattr(splits, f"x_{split}").astype(np.float32), batch_size=1000, verbose=0
            )
            for split in ("val", "test")
        }
    for size in range(1, len(model_files) + 1):
        for members in itertools.combinations(model_files, size):
            row: dict = {"members": list(members)}
            for split in ("val", "test"):
                mean = np.mean([probs[m][split] for m in members], axis=0)
                row[split] = float((mean.argmax(1) == getattr(splits, f"y_{split}")).mean())
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
