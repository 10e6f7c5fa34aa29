"""Print the test accuracy of a saved Keras model on the real test set (the seed's scaling: /255).

Usage: python benchmarks/probes/test_accuracy.py MODEL_FILE DATA_DIR
"""

import gzip
import sys

import keras
import numpy as np


def idx(path: str, offset: int) -> np.ndarray:
    """The bytes of a gzipped IDX file after its header."""
    with gzip.open(path) as fh:
        return np.frombuffer(fh.read(), np.uint8, offset=offset)


def main(model_file: str, data_dir: str) -> float:
    """Share of the 10,000 test images the model classifies correctly."""
    x = idx(f"{data_dir}/t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1) / 255.0
    y = idx(f"{data_dir}/t10k-labels-idx1-ubyte.gz", 8)
    model = keras.saving.load_model(model_file, compile=False)
    return float((model.predict(x, batch_size=1024, verbose=0).argmax(1) == y).mean())


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2]))
