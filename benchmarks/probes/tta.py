"""Validation and test accuracy of a saved model with and without shift test-time augmentation.

Usage: python benchmarks/probes/tta.py PREPARED_DIR MODEL_FILE [MODEL_FILE ...]
Prints one JSON line per model: accuracy for shift 0 (the model alone), 1 and 2 pixels.
"""

import json
import sys
from pathlib import Path

import keras
import numpy as np

from fmnist_mlops.data.splits import load_prepared
from fmnist_mlops.model.cnn import with_shift_tta


def main(prepared: str, *model_files: str) -> None:
    """Score every model on the prepared validation and test splits."""
    splits = load_prepared(Path(prepared))
    for model_file in model_files:
        network = keras.saving.load_model(model_file, compile=False)
        row: dict = {"model": model_file}
        for shift in (0, 1, 2):
            model = with_shift_tta(network, shift)
            for split in ("val", "test"):
                x, y = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}")
                predicted = model.predict(x.astype(np.float32), batch_size=1000, verbose=0)
                row[f"{split}_shift{shift}"] = float((predicted.argmax(1) == y).mean())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
